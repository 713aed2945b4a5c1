#include "sync/protocol.h"

#include <gtest/gtest.h>

#include <random>

#include "tests/support/mangle.h"

namespace pp::sync {
namespace {

Envelope Sample() {
  Envelope e;
  e.device = "kiosk-7";
  e.seq = 42;
  e.op = "0f1e2d3c";
  e.type = kOpPostSurplus;
  e.ts_ms = 1795554000000;
  e.body = {{"description", "soto ayam"}, {"quantity_kg", 3.5}, {"allergens", {"eggs"}}};
  return e;
}

TEST(Protocol, SignedEnvelopesVerifyAndAnyChangeBreaksThem) {
  auto keys = GenerateKeyPair();
  Envelope e = Sample();
  Sign(e, keys.secret_key);
  auto decoded = Decode(Encode(e));
  ASSERT_TRUE(decoded.ok()) << decoded.error().ToString();
  EXPECT_TRUE(Verify(*decoded, keys.public_key));
  for (auto mutate : std::vector<std::function<void(Envelope&)>>{
           [](Envelope& x) { x.seq++; },
           [](Envelope& x) { x.op = "other"; },
           [](Envelope& x) { x.device = "kiosk-8"; },
           [](Envelope& x) { x.type = kOpClaim; },
           [](Envelope& x) { x.ts_ms++; },
           [](Envelope& x) { x.body["quantity_kg"] = 35; }}) {
    Envelope t = *decoded;
    mutate(t);
    EXPECT_FALSE(Verify(t, keys.public_key));
  }
  EXPECT_FALSE(Verify(*decoded, GenerateKeyPair().public_key));
}

TEST(Protocol, DecodeNamesWhatIsWrong) {
  auto bad = Decode(R"({"v":2,"device":"a/b","seq":0,"op":"","type":7,"body":[],"x":1})");
  ASSERT_FALSE(bad.ok());
  std::set<std::string> fields;
  for (const auto& f : bad.error().fields) fields.insert(f.field);
  for (const char* f : {"v", "device", "seq", "op", "type", "body", "x", "ts", "sig"})
    EXPECT_TRUE(fields.count(f)) << f;
  EXPECT_FALSE(Decode("{").ok());
  EXPECT_EQ(Decode(std::string(kMaxMessageBytes + 1, ' ')).error().code, Code::kResourceExhausted);
}

TEST(Protocol, DeepNestingIsRefusedUpAndDown) {
  auto keys = GenerateKeyPair();
  Envelope e = Sample();
  e.body = {{"notes", "x"}};
  Sign(e, keys.secret_key);
  std::string bytes = Encode(e);
  // The body's "x" swapped for arrays nested 40 and 20,000 deep: still
  // within the size limit, refused by name before anything copies them.
  for (int n : {40, 20000}) {
    std::string deep = bytes;
    deep.replace(deep.find("\"x\""), 3, std::string(n, '[') + std::string(n, ']'));
    ASSERT_LE(deep.size(), kMaxMessageBytes);
    auto d = Decode(deep);
    ASSERT_FALSE(d.ok()) << n;
    EXPECT_EQ(d.error().message, "message nests deeper than 32 levels");
    auto down = DecodeDown(R"({"v":1,"kind":"batch","messages":[)" + std::string(n, '[') + std::string(n, ']') + "]}");
    ASSERT_FALSE(down.ok()) << n;
    EXPECT_EQ(down.error().message, "down message nests deeper than 32 levels");
  }
}

// Whatever bytes arrive, decoding answers with an envelope or an error:
// What every device sends: an op's envelope, signed over exactly its fields.
TEST(Protocol, ASealedEnvelopeCarriesItsFieldsAndVerifiesUntilOneChanges) {
  KeyPair keys = GenerateKeyPair();
  Envelope e = Sealed("kiosk-1", 7, "op-7", kOpPostSurplus, {{"n", 1}}, 1234, keys.secret_key);
  EXPECT_EQ(e.device, "kiosk-1");
  EXPECT_EQ(e.seq, 7u);
  EXPECT_EQ(e.op, "op-7");
  EXPECT_EQ(e.type, kOpPostSurplus);
  EXPECT_EQ(e.ts_ms, 1234);
  EXPECT_EQ(e.body, (nlohmann::json{{"n", 1}}));
  EXPECT_TRUE(Verify(e, keys.public_key));
  e.seq = 8;
  EXPECT_FALSE(Verify(e, keys.public_key));
}

// 20,000 deterministic mutations of a good envelope and a good batch
// (tests/support/mangle.h: bytes flipped, cut, repeated, JSON tokens
// dropped in), run under AddressSanitizer by the test command.
TEST(Protocol, MangledBytesDecodeOrAreRefusedNeverCrash) {
  auto keys = GenerateKeyPair();
  Envelope e = Sample();
  Sign(e, keys.secret_key);
  const std::string up = Encode(e);
  const std::string down = EncodeDownBatch({R"({"v":1,"kind":"outcome","id":3,"op":"x","data":{"a":[1,2]}})",
                                            R"({"v":1,"kind":"event","id":4,"data":{"id":9}})"});
  std::mt19937 rng(20261130);
  int decoded = 0, refused = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string m = i % 2 ? up : down;
    for (int k = 1 + int(rng() % 4); k > 0; --k) m = test::MutateBytes(std::move(m), rng);
    if (i % 2) {
      auto d = Decode(m);
      if (d.ok()) {
        ++decoded;
        (void)Verify(*d, keys.public_key);  // canonical bytes of whatever decoded
      } else {
        ++refused;
        EXPECT_FALSE(d.error().message.empty());
      }
    } else {
      auto d = DecodeDown(m);
      d.ok() ? ++decoded : ++refused;
    }
  }
  // Both outcomes happen: the mutations reach past the parser's first check.
  EXPECT_GT(decoded, 100);
  EXPECT_GT(refused, 10000);
}

TEST(Protocol, DownBatchesCarryTheirMessagesAsTheyWere) {
  std::string a = R"({"v":1,"kind":"outcome","id":3,"op":"x"})", b = R"({"v":1,"kind":"event","id":4})";
  std::string batch = EncodeDownBatch({a, b});
  EXPECT_LE(batch.size(), a.size() + b.size() + BatchOverhead(2));
  auto got = DecodeDown(batch);
  ASSERT_TRUE(got.ok()) << got.error().ToString();
  ASSERT_EQ(got->messages.size(), 2u);
  EXPECT_EQ(got->messages[0], nlohmann::json::parse(a));
  EXPECT_EQ(got->messages[1], nlohmann::json::parse(b));
  EXPECT_EQ(got->prev, 0);
  for (const char* kind : {"null", "7", "[\"batch\"]"}) {  // a kind not a string: a message alone, not a throw
    auto odd = DecodeDown(std::string(R"({"v":1,"id":5,"kind":)") + kind + "}");
    ASSERT_TRUE(odd.ok()) << kind;
    EXPECT_EQ(odd->messages.size(), 1u);
  }
  auto one = DecodeDown(a);  // a message alone is itself
  ASSERT_TRUE(one.ok());
  ASSERT_EQ(one->messages.size(), 1u);
  EXPECT_EQ(one->messages[0]["op"], "x");
  EXPECT_FALSE(DecodeDown("[1]").ok());
  auto no_array = DecodeDown(R"({"kind":"batch","messages":{}})");
  ASSERT_FALSE(no_array.ok());
  EXPECT_EQ(no_array.error().fields.at(0).field, "messages");
  EXPECT_FALSE(DecodeDown(R"({"kind":"batch","messages":[{},2]})").ok());
}

// A device's queued ops in one publish: each envelope as it was signed,
// with its traceparent; a malformed element fails alone, a malformed batch
// as a whole, naming the field.
TEST(Protocol, UpBatchesCarryEachSignedOpAndItsTraceparent) {
  KeyPair keys = GenerateKeyPair();
  std::vector<std::string> envs;
  for (int i = 1; i <= 3; ++i) {
    Envelope e;
    e.device = "kiosk-1";
    e.seq = uint64_t(i);
    e.op = "op-" + std::to_string(i);
    e.type = kOpPostSurplus;
    e.body = {{"n", i}};
    Sign(e, keys.secret_key);
    envs.push_back(Encode(e));
  }
  const std::string tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  std::string batch = EncodeUpBatch({envs[0], envs[1], envs[2]}, {tp, "", tp});
  EXPECT_LE(batch.size(), envs[0].size() + envs[1].size() + envs[2].size() + 2 * tp.size() + UpBatchOverhead(3));
  auto got = DecodeUpBatch(batch);
  ASSERT_TRUE(got.ok()) << got.error().ToString();
  ASSERT_EQ(got->size(), 3u);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE((*got)[i].env.ok()) << i;
    EXPECT_EQ((*got)[i].env->op, "op-" + std::to_string(i + 1));
    EXPECT_TRUE(Verify(*(*got)[i].env, keys.public_key)) << "the signature did not survive the batch";
  }
  EXPECT_EQ((*got)[0].traceparent, tp);
  EXPECT_EQ((*got)[1].traceparent, "");

  // One bad element among good ones fails alone.
  auto mixed = DecodeUpBatch(R"({"v":1,"kind":"batch","ops":[{"env":)" + envs[0] +
                             R"(},{"env":{"v":1}},{"env":)" + envs[1] + R"(,"tp":7},{"env":)" + envs[2] +
                             R"(,"extra":1}]})");
  ASSERT_TRUE(mixed.ok()) << mixed.error().ToString();
  ASSERT_EQ(mixed->size(), 4u);
  EXPECT_TRUE((*mixed)[0].env.ok());
  EXPECT_FALSE((*mixed)[1].env.ok());
  EXPECT_EQ((*mixed)[1].env.error().message, "malformed envelope");
  EXPECT_FALSE((*mixed)[2].env.ok()) << "a traceparent that is not a string";
  EXPECT_FALSE((*mixed)[3].env.ok()) << "an unknown field beside the envelope";

  // A batch that is not one.
  auto field_of = [](std::string_view payload) {
    auto r = DecodeUpBatch(payload);
    return r.ok() ? std::string("(accepted)") : r.error().fields.empty() ? r.error().message : r.error().fields.at(0).field;
  };
  EXPECT_EQ(field_of(R"({"v":1,"kind":"batch","ops":[]})"), "ops");
  EXPECT_EQ(field_of(R"({"v":1,"kind":"batch","ops":{}})"), "ops");
  EXPECT_EQ(field_of(R"({"v":2,"kind":"batch","ops":[{"env":{}}]})"), "v");
  EXPECT_EQ(field_of(R"({"v":1,"kind":"post","ops":[{"env":{}}]})"), "kind");
  EXPECT_EQ(field_of(R"({"v":1,"kind":"batch","ops":[{"env":{}}],"x":1})"), "x");
  std::vector<std::string_view> too_many(kMaxUpBatchOps + 1, envs[0]);
  EXPECT_EQ(field_of(EncodeUpBatch(too_many, {})), "ops");
  EXPECT_FALSE(DecodeUpBatch("[1]").ok());
  EXPECT_FALSE(DecodeUpBatch(std::string(kMaxMessageBytes + 1, ' ')).ok());
  std::vector<std::string_view> most(kMaxUpBatchOps, envs[0]);
  auto full = DecodeUpBatch(EncodeUpBatch(most, {}));
  ASSERT_TRUE(full.ok()) << full.error().ToString();
  EXPECT_EQ(full->size(), kMaxUpBatchOps);
}

// `prev` names the last message of the hub's previous publish to the device:
// on a batch, or spliced into a message sent alone (the same bytes go to
// every device of an organisation, so the relay does not parse them again).
TEST(Protocol, APublishNamesTheMessageBeforeIt) {
  std::string a = R"({"v":1,"kind":"outcome","id":3,"op":"x"})", b = R"({"v":1,"kind":"event","id":4})";
  auto batch = DecodeDown(EncodeDownBatch({a, b}, 9223372036854775807));
  ASSERT_TRUE(batch.ok()) << batch.error().ToString();
  EXPECT_EQ(batch->prev, 9223372036854775807);
  EXPECT_EQ(batch->messages.size(), 2u);
  EXPECT_LE(EncodeDownBatch({a, b}, 9223372036854775807).size(), a.size() + b.size() + BatchOverhead(2));
  auto alone = DecodeDown(WithPrev(a, 2));
  ASSERT_TRUE(alone.ok()) << alone.error().ToString();
  EXPECT_EQ(alone->prev, 2);
  ASSERT_EQ(alone->messages.size(), 1u);
  EXPECT_EQ(alone->messages[0]["op"], "x");
  EXPECT_EQ(alone->messages[0]["id"], 3);
  EXPECT_EQ(alone->messages[0], nlohmann::json::parse(a)) << "prev is the publish's, not the message's";
  EXPECT_EQ(WithPrev(a, 0), a);  // none known: the bytes as they were
  EXPECT_EQ(WithPrev("{}", 5), R"({"prev":5})");
  for (const char* bad : {"0", "-1", "1.5", "\"7\"", "null", "18446744073709551615"}) {
    auto d = DecodeDown(std::string(R"({"v":1,"kind":"batch","messages":[],"prev":)") + bad + "}");
    ASSERT_FALSE(d.ok()) << bad;
    EXPECT_EQ(d.error().fields.at(0).field, "prev") << bad;
  }
}

TEST(Protocol, BatchesAreCutToFitAndKeepTheirOrder) {
  using Cuts = std::vector<std::pair<size_t, size_t>>;
  EXPECT_EQ(CutIntoBatches({}), Cuts{});
  EXPECT_EQ(CutIntoBatches({10, 20, 30}), (Cuts{{0, 3}}));
  // A limit of 110: two messages of 20 need 40 + BatchOverhead(2) = 106
  // bytes, three of them 60 + 67 = 127, so two by two.
  EXPECT_EQ(CutIntoBatches({20, 20, 20, 20, 20}, 110), (Cuts{{0, 2}, {2, 4}, {4, 5}}));
  // Too large to share: alone, and the others around it still batched.
  EXPECT_EQ(CutIntoBatches({10, 500, 10, 10}, 110), (Cuts{{0, 1}, {1, 2}, {2, 4}}));
  // Every cut, batched, fits.
  std::vector<size_t> sizes;
  for (size_t i = 0; i < 200; ++i) sizes.push_back(100 + (i * 7919) % 3000);
  size_t next = 0;
  for (auto [first, last] : CutIntoBatches(sizes)) {
    EXPECT_EQ(first, next);
    size_t bytes = BatchOverhead(last - first);
    for (size_t i = first; i < last; ++i) bytes += sizes[i];
    EXPECT_LE(bytes, kMaxBatchBytes);
    next = last;
  }
  EXPECT_EQ(next, sizes.size());
}

TEST(Protocol, Topics) {
  EXPECT_EQ(UpTopic("kiosk-7", "claim"), "pp/v1/up/kiosk-7/claim");
  auto t = ParseUpTopic("pp/v1/up/kiosk-7/claim");
  ASSERT_TRUE(t);
  EXPECT_EQ(t->first, "kiosk-7");
  EXPECT_EQ(t->second, "claim");
  EXPECT_FALSE(ParseUpTopic("pp/v1/up/kiosk-7"));
  EXPECT_FALSE(ParseUpTopic("pp/v1/up/a+b/claim"));
  EXPECT_FALSE(ParseUpTopic("pp/v1/down/kiosk-7"));
  EXPECT_FALSE(ValidDeviceId("#"));
  EXPECT_FALSE(ValidDeviceId(std::string(65, 'a')));
}

TEST(Protocol, ErrorsBecomeMachineReadableOutcomes) {
  Envelope e = Sample();
  auto conflict = OutcomeFor(e, Error::Conflict("taken", R"({"claimed_by":3})"));
  EXPECT_EQ(conflict.status, OutcomeStatus::kConflict);
  EXPECT_EQ(conflict.data["claimed_by"], 3);
  auto invalid = OutcomeFor(e, Error::Invalid("bad", {{"quantity_kg", "must be > 0"}}));
  EXPECT_EQ(invalid.code, "invalid");
  EXPECT_EQ(OutcomeJson(invalid)["data"][0]["field"], "quantity_kg");
  EXPECT_EQ(OutcomeFor(e, Error{Code::kPermissionDenied, "no", {}, {}}).code, "forbidden");
}

}  // namespace
}  // namespace pp::sync
