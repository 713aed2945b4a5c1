#include "common/premises.h"

#include <cstdlib>

namespace pp {

std::vector<std::string> SplitCsvLine(const std::string& line) {
  std::vector<std::string> out(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') out.back() += '"', ++i;
      else if (c == '"') quoted = false;
      else out.back() += c;
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      out.emplace_back();
    } else if (c != '\r') {
      out.back() += c;
    }
  }
  return out;
}

Result<std::vector<Premises>> ParsePremisesCsv(std::istream& in) {
  std::vector<Premises> out;
  std::string line;
  if (!std::getline(in, line)) return Error::Invalid("premises file is empty");
  for (int n = 2; std::getline(in, line); ++n) {
    if (line.empty() || line == "\r") continue;
    auto f = SplitCsvLine(line);
    auto where = "premises line " + std::to_string(n);
    if (f.size() != 10) return Error::Invalid(where + ": expected 10 fields, got " + std::to_string(f.size()));
    char *end_lat = nullptr, *end_lon = nullptr;
    double lat = std::strtod(f[6].c_str(), &end_lat), lon = std::strtod(f[7].c_str(), &end_lon);
    if (f[6].empty() || *end_lat || f[7].empty() || *end_lon || !(lat >= -90 && lat <= 90) ||
        !(lon >= -180 && lon <= 180))
      return Error::Invalid(where + ": lat/lon \"" + f[6] + "\", \"" + f[7] + "\" is not a position");
    out.push_back({f[0], f[1], f[2], {lat, lon}});
  }
  return out;
}

}  // namespace pp
