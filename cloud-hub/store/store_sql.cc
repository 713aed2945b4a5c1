#include "cloud-hub/store/store_sql.h"

namespace pp::store_sql {

std::string QuotedSources(SurplusEvent event) {
  std::string out;
  for (auto s : SourcesOf(event)) {
    if (!out.empty()) out += ',';
    out += '\'';
    out += ToString(s);
    out += '\'';
  }
  return out;
}

std::string JoinAllergens(const std::vector<std::string>& a) {
  std::string out;
  for (const auto& s : a) (out += out.empty() ? "" : ",") += s;
  return out;
}

std::vector<std::string> SplitAllergens(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start < s.size()) {
    size_t end = s.find(',', start);
    if (end == std::string::npos) end = s.size();
    out.push_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

std::string DueSql(char p) {
  std::string now = std::string(1, p) + "1", limit = std::string(1, p) + "2";
  return "SELECT id FROM ("
         " SELECT id, offer_expires_at AS due FROM surplus WHERE status='offered' AND "
         "offer_expires_at <= " + now +
         " UNION ALL SELECT id, next_retry_at FROM surplus WHERE status='dead_lettered' AND "
         "next_retry_at <= " + now +
         " UNION ALL SELECT id, best_before FROM surplus WHERE status IN (" +
         QuotedSources(SurplusEvent::kExpire) + ") AND best_before <= " + now +
         ") due_work GROUP BY id ORDER BY min(due), id LIMIT " + limit;
}

std::string FindSurplusSql(char p) {
  auto arg = [p](int n) { return std::string(1, p) + std::to_string(n); };
  auto big = [&](int n) { return "CAST(" + arg(n) + " AS BIGINT)"; };
  auto dbl = [&](int n) { return "CAST(" + arg(n) + " AS DOUBLE PRECISION)"; };
  std::string at = "(CASE WHEN " + big(7) + " = 1 THEN updated_at ELSE created_at END)";
  // Portable to both: no arrays, casts that SQLite and PostgreSQL read alike.
  return std::string("SELECT ") + kSurplusColumns + " FROM surplus WHERE id > " + big(1) +
         " AND (" + arg(2) + " = '' OR (',' || " + arg(2) + " || ',') LIKE ('%,' || status || ',%'))" +
         " AND (" + big(3) + " IS NULL OR provider_id = " + big(3) + ")" +
         " AND (" + big(4) + " IS NULL OR claimed_by = " + big(4) + ")" +
         " AND (" + big(5) + " IS NULL OR " + at + " >= " + big(5) + ")" +
         " AND (" + big(6) + " IS NULL OR " + at + " < " + big(6) + ")" +
         " AND (" + dbl(8) + " IS NULL OR (lat BETWEEN " + dbl(8) + " AND " + dbl(9) +
         " AND lon BETWEEN " + dbl(10) + " AND " + dbl(11) + "))" +
         " ORDER BY id LIMIT " + big(12);
}

FindArgs FindSurplusArgs(const SurplusFilter& f) {
  FindArgs a;
  for (auto st : f.statuses) (a.statuses += a.statuses.empty() ? "" : ",") += ToString(st);
  if (f.area) {
    a.min_lat = f.area->min_lat, a.max_lat = f.area->max_lat;
    a.min_lon = f.area->min_lon, a.max_lon = f.area->max_lon;
  }
  return a;
}

std::string JoinIds(const std::vector<int64_t>& ids) {
  std::string out;
  for (auto id : ids) (out += out.empty() ? "" : ",") += std::to_string(id);
  return out;
}

std::vector<int64_t> SplitIds(const std::string& s) {
  std::vector<int64_t> out;
  for (const auto& part : SplitAllergens(s)) out.push_back(std::stoll(part));
  return out;
}

}  // namespace pp::store_sql
