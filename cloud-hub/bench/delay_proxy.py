#!/usr/bin/env python3
# delay_proxy.py LISTEN_PORT TARGET_PORT DELAY_MS
#
# A TCP proxy on loopback that holds every chunk it reads DELAY_MS in each
# direction, in order: put between pp-hub and mosquitto, it stands for a
# broker on another host (this machine has no netem). Benchmarks only
# (docs/benchmarks.md, "Session 24"); it listens on 127.0.0.1 only.
import asyncio, sys, time
LP, TP, D = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1000
async def pipe(r, w):
    q = asyncio.Queue()
    async def out():
        while True:
            t, data = await q.get()
            if data is None: break
            dt = t - time.monotonic()
            if dt > 0: await asyncio.sleep(dt)
            w.write(data)
            await w.drain()
        w.close()
    task = asyncio.create_task(out())
    try:
        while True:
            data = await r.read(65536)
            if not data: break
            q.put_nowait((time.monotonic() + D, data))
    finally:
        q.put_nowait((0, None))
        await task
async def handle(cr, cw):
    sr, sw = await asyncio.open_connection('127.0.0.1', TP)
    await asyncio.gather(pipe(cr, sw), pipe(sr, cw), return_exceptions=True)
async def main():
    srv = await asyncio.start_server(handle, '127.0.0.1', LP)
    async with srv: await srv.serve_forever()
asyncio.run(main())
