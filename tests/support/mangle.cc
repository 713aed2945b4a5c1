#include "tests/support/mangle.h"

#include <functional>
#include <vector>

#include <nlohmann/json.hpp>

namespace pp::test {
namespace {

size_t Upto(size_t n, std::mt19937& rng) { return std::uniform_int_distribution<size_t>(0, n)(rng); }

// A value of the wrong type (or size) for wherever it lands.
nlohmann::json OddValue(std::mt19937& rng) {
  static const std::vector<nlohmann::json> odd{
      nullptr, true, -1, 0, 1.5, 1e308, -1e308, 18446744073709551615ULL, -9223372036854775807LL - 1, "", "x",
      std::string(5000, 'a'), nlohmann::json::array(), nlohmann::json::array({1, "a"}), nlohmann::json::object(),
      nlohmann::json{{"a", 1}}};
  return odd[Upto(odd.size() - 1, rng)];
}

}  // namespace

std::string MutateBytes(std::string m, std::mt19937& rng) {
  static const std::vector<std::string> tokens{"\"", "\\", "{", "}", "[", "]", ",", ":", "null", "0", "-1",
                                               "1e999", "\\u0000", "\\ud800", "\xff", "\xc3", " ", "\"\":"};
  switch (Upto(6, rng)) {
    case 0:  // one bit flipped
      if (!m.empty()) m[Upto(m.size() - 1, rng)] ^= char(1 << Upto(7, rng));
      break;
    case 1:  // the end cut off
      m.resize(Upto(m.size(), rng));
      break;
    case 2: {  // a piece cut out
      const size_t at = Upto(m.size(), rng);
      m.erase(at, Upto(16, rng));
      break;
    }
    case 3: {  // a piece repeated
      const size_t at = Upto(m.size(), rng);
      m.insert(at, m.substr(at, Upto(32, rng)));
      break;
    }
    case 4:  // a JSON token inserted
      m.insert(Upto(m.size(), rng), tokens[Upto(tokens.size() - 1, rng)]);
      break;
    case 5:  // a random byte inserted
      m.insert(Upto(m.size(), rng), 1, char(Upto(255, rng)));
      break;
    default:  // spaces inserted
      m.insert(Upto(m.size(), rng), std::string(Upto(3, rng) + 1, ' '));
      break;
  }
  return m;
}

std::string MutateJson(const std::string& text, std::mt19937& rng) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) return text;
  std::vector<nlohmann::json*> objects;
  std::function<void(nlohmann::json&)> walk = [&](nlohmann::json& v) {
    if (v.is_object()) objects.push_back(&v);
    if (v.is_structured())
      for (auto& child : v) walk(child);
  };
  walk(j);
  if (objects.empty()) return OddValue(rng).dump();
  nlohmann::json& target = *objects[Upto(objects.size() - 1, rng)];
  std::vector<std::string> keys;
  for (const auto& [k, v] : target.items()) keys.push_back(k);
  const size_t what = Upto(2, rng);
  if (keys.empty() || what == 2) {
    target["extra"] = OddValue(rng);
  } else {
    const std::string& key = keys[Upto(keys.size() - 1, rng)];
    if (what == 0) target[key] = OddValue(rng);
    else target.erase(key);
  }
  return j.dump();
}

std::string Mangle(std::string text, std::mt19937& rng) {
  for (size_t changes = Upto(3, rng) + 1; changes > 0; --changes)
    text = Upto(1, rng) ? MutateBytes(std::move(text), rng) : MutateJson(text, rng);
  return text;
}

}  // namespace pp::test
