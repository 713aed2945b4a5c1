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

}  // namespace pp::store_sql
