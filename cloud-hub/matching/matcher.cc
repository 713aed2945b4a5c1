#include "cloud-hub/matching/matcher.h"

#include <algorithm>

#include "common/process_cpu.h"

namespace pp {

std::vector<RankedCandidate> Rank(const VehicleIndex& index, const MatchRequest& req,
                                  Timestamp now, const MatchOptions& options,
                                  TravelTimes& travel) {
  const TravelModel& model = travel.model();
  double seconds_left =
      std::chrono::duration<double>(req.need.arrive_by - now).count();
  if (seconds_left <= 0) return {};
  // Nobody beyond what the model can drive before arrive_by can be eligible.
  double max_km = std::min(options.max_radius_km, model.KmWithin(seconds_left));
  auto nearest = index.FindNearest(
      req.at, options.candidates, max_km, [&](const Vehicle& v, double km) {
        if (std::find(req.excluded.begin(), req.excluded.end(), v.ngo_id) != req.excluded.end())
          return false;
        return IsEligible(v, req.need, now, model.SecondsFor(km));
      });
  if (nearest.empty()) return {};
  std::vector<GeoPoint> from;
  std::vector<double> km;
  for (const auto& c : nearest) {
    from.push_back(index.Find(c.ngo_id)->position);
    km.push_back(c.distance_km);
  }
  auto times = travel.For(from, km, req.at);
  std::vector<RankedCandidate> out;
  for (size_t i = 0; i < nearest.size(); ++i) {
    double eta = times.seconds[i];
    // A routed time may be longer than the model's: re-check arrival.
    if (now + std::chrono::milliseconds(int64_t(eta * 1000)) >= req.need.arrive_by) continue;
    out.push_back({nearest[i].ngo_id, nearest[i].distance_km, eta});
  }
  std::stable_sort(out.begin(), out.end(), [](const RankedCandidate& a, const RankedCandidate& b) {
    return a.eta_seconds < b.eta_seconds;
  });
  return out;
}

Matcher::Matcher(const Clock& clock, MatchOptions options, TravelTimes& travel)
    : clock_(clock), options_(options), travel_(travel) {
  int n = std::max(1, options_.shards);
  for (int i = 0; i < n; ++i) shards_.push_back(std::make_unique<Shard>());
  for (auto& s : shards_) s->thread = std::thread([this, sp = s.get()] { Run(*sp); });
}

Matcher::~Matcher() {
  stopping_ = true;
  for (auto& s : shards_) {
    std::lock_guard lock(s->mu);
    s->cv.notify_all();
  }
  for (auto& s : shards_) s->thread.join();
}

void Matcher::Run(Shard& s) {
  NameThisThread("match-shard");
  while (true) {
    std::function<void(VehicleIndex&)> task;
    {
      std::unique_lock lock(s.mu);
      s.busy = false;
      s.cv.notify_all();  // WaitIdle
      s.cv.wait(lock, [&] { return stopping_ || !s.queue.empty(); });
      if (s.queue.empty()) return;
      task = std::move(s.queue.front());
      s.queue.pop_front();
      s.busy = true;
    }
    auto t0 = std::chrono::steady_clock::now();
    task(s.index);
    s.busy_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(
                     std::chrono::steady_clock::now() - t0)
                     .count();
  }
}

void Matcher::Enqueue(Shard& s, std::function<void(VehicleIndex&)> task) {
  std::lock_guard lock(s.mu);
  s.queue.push_back(std::move(task));
  s.cv.notify_all();
}

Matcher::Shard& Matcher::ShardFor(const GeoPoint& p) {
  uint64_t cell = VehicleIndex::CellOf(p).id();
  // Mix the bits: neighbouring cells share their high bits.
  cell ^= cell >> 33;
  cell *= 0xff51afd7ed558ccdull;
  cell ^= cell >> 33;
  return *shards_[cell % shards_.size()];
}

void Matcher::UpsertVehicle(const Vehicle& v) {
  for (auto& s : shards_) Enqueue(*s, [v](VehicleIndex& index) { index.Upsert(v); });
}

void Matcher::Match(MatchRequest req, Done done) {
  Shard& s = ShardFor(req.at);
  Enqueue(s, [this, req = std::move(req), done = std::move(done)](VehicleIndex& index) {
    done(Rank(index, req, clock_.Now(), options_, travel_));
  });
}

void Matcher::WaitIdle() {
  for (auto& s : shards_) {
    std::unique_lock lock(s->mu);
    s->cv.wait(lock, [&] { return s->queue.empty() && !s->busy; });
  }
}

size_t Matcher::QueueDepth() const {
  size_t n = 0;
  for (const auto& s : shards_) {
    std::lock_guard lock(s->mu);
    n += s->queue.size();
  }
  return n;
}

double Matcher::SaturationRatio() {
  std::lock_guard lock(sat_mu_);
  auto now = std::chrono::steady_clock::now();
  int64_t busy = 0;
  for (const auto& s : shards_) busy += s->busy_ns.load();
  double wall = std::chrono::duration<double, std::nano>(now - sat_last_).count() *
                double(shards_.size());
  double ratio = wall > 0 ? double(busy - sat_busy_last_) / wall : 0;
  sat_last_ = now;
  sat_busy_last_ = busy;
  // A backlog means the shards cannot keep up, whatever the busy time says.
  if (QueueDepth() > 1000 * shards_.size()) ratio = 1;
  return std::clamp(ratio, 0.0, 1.0);
}

}  // namespace pp
