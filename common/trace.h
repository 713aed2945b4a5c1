// W3C Trace Context (traceparent: "00-{32 hex trace id}-{16 hex span id}-{2 hex flags}").
// One post keeps one trace id from the kiosk that posted it, through the
// hub, to the tablet that collects it: every log line on the way carries
// it, so `grep TRACE_ID` follows the food. Ids are random, not secret.
#pragma once

#include <string>
#include <string_view>

namespace pp {

bool ValidTraceparent(std::string_view tp);
// A new trace (sampled flag set).
std::string NewTraceparent();
// The same trace, a new span: for the next hop. A new trace if `parent` is
// not valid.
std::string ChildTraceparent(std::string_view parent);
// The 32-hex trace id ("" if not valid): what logs carry as "trace".
std::string TraceId(std::string_view tp);

}  // namespace pp
