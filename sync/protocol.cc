#include "sync/protocol.h"

#include <sodium.h>

#include <mutex>

#include "common/validation.h"

namespace pp::sync {
namespace {

void InitSodium() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (sodium_init() < 0) std::abort();  // no randomness source: nothing is safe
  });
}

template <size_t N>
Result<std::array<unsigned char, N>> FromBase64(std::string_view b64, const char* what) {
  InitSodium();
  std::array<unsigned char, N> out{};
  size_t len = 0;
  if (sodium_base642bin(out.data(), N, b64.data(), b64.size(), nullptr, &len, nullptr,
                        sodium_base64_VARIANT_ORIGINAL) != 0 ||
      len != N)
    return Error::Invalid(std::string(what) + " must be " + std::to_string(N) +
                          " bytes in standard base64");
  return out;
}

}  // namespace

std::string UpTopic(std::string_view device, std::string_view type) {
  return "pp/v1/up/" + std::string(device) + "/" + std::string(type);
}

std::string DownTopic(std::string_view device) { return "pp/v1/down/" + std::string(device); }

std::optional<std::pair<std::string, std::string>> ParseUpTopic(std::string_view t) {
  constexpr std::string_view kPrefix = "pp/v1/up/";
  if (!t.starts_with(kPrefix)) return std::nullopt;
  t.remove_prefix(kPrefix.size());
  auto slash = t.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  std::string_view device = t.substr(0, slash), type = t.substr(slash + 1);
  if (!ValidDeviceId(device) || type.empty() || type.find('/') != std::string_view::npos)
    return std::nullopt;
  return std::pair{std::string(device), std::string(type)};
}

bool ValidDeviceId(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.'))
      return false;
  return true;
}

bool KnownOpType(std::string_view t) {
  for (const char* k : {kOpPostSurplus, kOpClaim, kOpAccept, kOpDecline, kOpRelease, kOpVehicle, kOpPickUp,
                        kOpDeliver, kOpNearby, kOpPing, kOpCatchUp})
    if (t == k) return true;
  return false;
}

KeyPair GenerateKeyPair() {
  InitSodium();
  KeyPair k;
  crypto_sign_keypair(k.public_key.data(), k.secret_key.data());
  return k;
}

std::string ToBase64(const unsigned char* data, size_t n) {
  InitSodium();
  std::string out(sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL), '\0');
  sodium_bin2base64(out.data(), out.size(), data, n, sodium_base64_VARIANT_ORIGINAL);
  out.resize(out.size() - 1);  // the terminating NUL
  return out;
}

Result<PublicKey> PublicKeyFromBase64(std::string_view b64) {
  return FromBase64<32>(b64, "public key");
}
bool IsDevicePublicKey(const PublicKey& key) {
  InitSodium();
  return crypto_core_ed25519_is_valid_point(key.data()) == 1;
}

Result<SecretKey> SecretKeyFromBase64(std::string_view b64) {
  return FromBase64<64>(b64, "secret key");
}

static std::string CanonicalBytes(const Envelope& e, std::string_view body_json) {
  std::string out = "pp1\n" + e.device + "\n" + std::to_string(e.seq) + "\n" + e.op + "\n" + e.type +
                    "\n" + std::to_string(e.ts_ms) + "\n";
  out += body_json;
  return out;
}

std::string CanonicalBytes(const Envelope& e) { return CanonicalBytes(e, e.body.dump()); }

void Sign(Envelope& e, const SecretKey& key) {
  InitSodium();
  std::string bytes = CanonicalBytes(e);
  std::array<unsigned char, crypto_sign_BYTES> sig{};
  crypto_sign_detached(sig.data(), nullptr, reinterpret_cast<const unsigned char*>(bytes.data()),
                       bytes.size(), key.data());
  e.sig = ToBase64(sig);
}

Envelope Sealed(std::string device, uint64_t seq, std::string op, std::string type, nlohmann::json body,
                int64_t ts_ms, const SecretKey& key) {
  Envelope e;
  e.device = std::move(device);
  e.seq = seq;
  e.op = std::move(op);
  e.type = std::move(type);
  e.ts_ms = ts_ms;
  e.body = std::move(body);
  Sign(e, key);
  return e;
}

bool Verify(const Envelope& e, const PublicKey& key) { return Verify(e, e.body.dump(), key); }

bool Verify(const Envelope& e, std::string_view body_json, const PublicKey& key) {
  auto sig = FromBase64<crypto_sign_BYTES>(e.sig, "sig");
  if (!sig.ok()) return false;
  std::string bytes = CanonicalBytes(e, body_json);
  return crypto_sign_verify_detached(sig->data(), reinterpret_cast<const unsigned char*>(bytes.data()),
                                     bytes.size(), key.data()) == 0;
}

std::string Encode(const Envelope& e) {
  return nlohmann::json{{"v", e.v},   {"device", e.device}, {"seq", e.seq}, {"op", e.op},
                        {"type", e.type}, {"ts", e.ts_ms},  {"body", e.body}, {"sig", e.sig}}
      .dump();
}

// Up messages, lone or batched, are at most the broker's packet size.
static Status CheckSize(std::string_view bytes, const char* what) {
  if (bytes.size() <= kMaxMessageBytes) return OkStatus();
  return Error{Code::kResourceExhausted, std::string(what) + " exceeds " + std::to_string(kMaxMessageBytes) + " bytes", {}, {}};
}

Result<Envelope> Decode(std::string_view bytes) {
  PP_RETURN_IF_ERROR(CheckSize(bytes, "message"));
  PP_ASSIGN_OR_RETURN(nlohmann::json j, ParseJsonObject(bytes, "message"));
  return DecodeJson(std::move(j));
}

Result<Envelope> DecodeJson(nlohmann::json j) {
  if (!j.is_object()) return Error::Invalid("malformed envelope: not a JSON object");
  std::vector<FieldError> bad;
  for (const auto& [k, v] : j.items())
    if (k != "v" && k != "device" && k != "seq" && k != "op" && k != "type" && k != "ts" &&
        k != "body" && k != "sig")
      bad.push_back({k, "unknown field"});
  auto str = [&](const char* k) -> std::string {
    if (!j.contains(k) || !j[k].is_string()) {
      bad.push_back({k, "must be a string"});
      return "";
    }
    return j[k].get<std::string>();
  };
  Envelope e;
  if (!j.contains("v") || !j["v"].is_number_integer() || j["v"].get<int64_t>() != kProtocolVersion)
    bad.push_back({"v", "must be " + std::to_string(kProtocolVersion)});
  e.device = str("device");
  e.op = str("op");
  e.type = str("type");
  e.sig = str("sig");
  if (!j.contains("seq") || !j["seq"].is_number_unsigned() || j["seq"].get<uint64_t>() == 0)
    bad.push_back({"seq", "must be a positive integer"});
  else
    e.seq = j["seq"].get<uint64_t>();
  if (!j.contains("ts") || !j["ts"].is_number_integer())
    bad.push_back({"ts", "must be an integer (Unix milliseconds)"});
  else
    e.ts_ms = j["ts"].get<int64_t>();
  if (!j.contains("body") || !j["body"].is_object())
    bad.push_back({"body", "must be a JSON object"});
  else
    e.body = std::move(j["body"]);
  if (!e.device.empty() && !ValidDeviceId(e.device))
    bad.push_back({"device", "must be 1-64 of A-Z a-z 0-9 _ . -"});
  if (e.op.size() > 64 || (j.contains("op") && e.op.empty()))
    bad.push_back({"op", "must be 1-64 characters"});
  if (!bad.empty()) return Error::Invalid("malformed envelope", std::move(bad));
  return e;
}

std::string EncodeUpBatch(const std::vector<std::string_view>& envelopes,
                          const std::vector<std::string_view>& traceparents) {
  std::string out = R"({"v":)" + std::to_string(kProtocolVersion) + R"(,"kind":"batch","ops":[)";
  for (size_t i = 0; i < envelopes.size(); ++i) {
    if (i) out += ',';
    out += R"({"env":)";
    out += envelopes[i];
    if (i < traceparents.size() && !traceparents[i].empty()) {
      out += R"(,"tp":")";
      out += traceparents[i];  // W3C traceparents are hex and dashes: nothing to escape
      out += '"';
    }
    out += '}';
  }
  out += "]}";
  return out;
}

Result<std::vector<UpBatchItem>> DecodeUpBatch(std::string_view payload) {
  PP_RETURN_IF_ERROR(CheckSize(payload, "batch"));
  PP_ASSIGN_OR_RETURN(nlohmann::json j, ParseJsonObject(payload, "batch"));
  std::vector<FieldError> bad;
  for (const auto& [k, v] : j.items())
    if (k != "v" && k != "kind" && k != "ops") bad.push_back({k, "unknown field"});
  if (!j.contains("v") || !j["v"].is_number_integer() || j["v"].get<int64_t>() != kProtocolVersion)
    bad.push_back({"v", "must be " + std::to_string(kProtocolVersion)});
  if (!j.contains("kind") || j["kind"] != "batch") bad.push_back({"kind", "must be \"batch\""});
  if (!j.contains("ops") || !j["ops"].is_array() || j["ops"].empty() || j["ops"].size() > kMaxUpBatchOps)
    bad.push_back({"ops", "must be an array of 1 to " + std::to_string(kMaxUpBatchOps) + " ops"});
  if (!bad.empty()) return Error::Invalid("malformed batch", std::move(bad));
  std::vector<UpBatchItem> items;
  items.reserve(j["ops"].size());
  for (auto& e : j["ops"]) {
    UpBatchItem item{Error::Invalid("malformed batch element", {{"ops", "each must be {\"env\": an envelope, \"tp\": a traceparent}"}}), ""};
    const bool shaped = e.is_object() && e.contains("env") &&
                        (!e.contains("tp") || e["tp"].is_string()) && e.size() == (e.contains("tp") ? 2u : 1u);
    if (shaped) {
      item.env = DecodeJson(std::move(e["env"]));
      if (e.contains("tp")) item.traceparent = e["tp"].get<std::string>();
    }
    items.push_back(std::move(item));
  }
  return items;
}

std::string_view ToString(OutcomeStatus s) {
  switch (s) {
    case OutcomeStatus::kAccepted: return "accepted";
    case OutcomeStatus::kConflict: return "conflict";
    case OutcomeStatus::kRejected: return "rejected";
  }
  return "?";
}

nlohmann::json OutcomeJson(const Outcome& o) {
  return {{"v", kProtocolVersion},       {"kind", "outcome"}, {"op", o.op},
          {"seq", o.seq},                {"status", ToString(o.status)},
          {"code", o.code},              {"message", o.message}, {"data", o.data}};
}

std::string EncodeDownBatch(const std::vector<std::string_view>& messages, int64_t prev) {
  std::string out = R"({"v":)" + std::to_string(kProtocolVersion) + R"(,"kind":"batch",)";
  if (prev > 0) out += R"("prev":)" + std::to_string(prev) + ',';
  out += R"("messages":[)";
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i) out += ',';
    out += messages[i];
  }
  out += "]}";
  return out;
}

std::vector<std::pair<size_t, size_t>> CutIntoBatches(const std::vector<size_t>& sizes, size_t limit) {
  std::vector<std::pair<size_t, size_t>> cuts;
  size_t first = 0, bytes = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i > first && bytes + sizes[i] + BatchOverhead(i - first + 1) > limit) {
      cuts.emplace_back(first, i);
      first = i;
      bytes = 0;
    }
    bytes += sizes[i];
  }
  if (first < sizes.size()) cuts.emplace_back(first, sizes.size());
  return cuts;
}

std::string WithPrev(std::string_view message, int64_t prev) {
  if (prev <= 0 || message.size() < 2 || message.front() != '{') return std::string(message);
  // Spliced in rather than parsed and dumped again: the relay sends one
  // message's bytes to every device of an organisation.
  std::string out = R"({"prev":)" + std::to_string(prev);
  if (message[1] != '}') out += ',';
  out.append(message.substr(1));
  return out;
}

Result<DownPublish> DecodeDown(std::string_view payload) {
  PP_ASSIGN_OR_RETURN(nlohmann::json m, ParseJsonObject(payload, "down message"));
  DownPublish out;
  if (m.contains("prev")) {
    const auto& p = m["prev"];
    if (!p.is_number_unsigned() || p.get<uint64_t>() == 0 || p.get<uint64_t>() > uint64_t(INT64_MAX))
      return Error::Invalid("down message has a bad prev", {{"prev", "must be a positive integer"}});
    out.prev = p.get<int64_t>();
    m.erase("prev");  // the publish's, not the message's
  }
  if (!(m.contains("kind") && m["kind"] == "batch")) {  // (value() would throw on a kind not a string)
    out.messages.push_back(std::move(m));
    return out;
  }
  if (!m.contains("messages") || !m["messages"].is_array())
    return Error::Invalid("batch down message has no array of messages", {{"messages", "must be an array"}});
  for (auto& e : m["messages"]) {
    if (!e.is_object()) return Error::Invalid("batch down message holds a non-object", {{"messages", "must hold objects"}});
    out.messages.push_back(std::move(e));
  }
  return out;
}

Outcome OutcomeFor(const Envelope& e, const Error& error) {
  Outcome o;
  o.op = e.op;
  o.seq = e.seq;
  o.message = error.message;
  if (error.code == Code::kAborted) {
    o.status = OutcomeStatus::kConflict;
    o.code = "conflict";
    o.data = nlohmann::json::parse(error.context_json.empty() ? "null" : error.context_json, nullptr, false);
    return o;
  }
  o.status = OutcomeStatus::kRejected;
  switch (error.code) {
    case Code::kInvalidArgument: o.code = "invalid"; break;
    case Code::kNotFound: o.code = "not_found"; break;
    case Code::kFailedPrecondition: o.code = "precondition_failed"; break;
    case Code::kPermissionDenied: o.code = "forbidden"; break;
    case Code::kUnauthenticated: o.code = "unauthenticated"; break;
    case Code::kResourceExhausted: o.code = "too_large"; break;
    case Code::kUnavailable: o.code = "unavailable"; break;
    default: o.code = "internal"; break;
  }
  o.data = nlohmann::json::array();
  for (const auto& f : error.fields) o.data.push_back({{"field", f.field}, {"reason", f.reason}});
  return o;
}

}  // namespace pp::sync
