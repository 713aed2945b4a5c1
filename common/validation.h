// Strict parsing of client requests into domain values. The same functions
// serve both doors (HTTP bodies and MQTT op bodies), so a request is valid or
// invalid the same way whichever way it came.
//
// Strict means: the body must be a JSON object; unknown fields, wrong types,
// out-of-range values and impossible times are errors; every bad field is
// named with the reason, all at once, so a person fixes them in one go.
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <string_view>

#include "common/clock.h"
#include "common/domain.h"
#include "common/error.h"
#include "common/vehicle.h"

namespace pp {

struct NewOrganization {
  OrgKind kind = OrgKind::kProvider;
  std::string name;
  GeoPoint position;
};

// An organisation's edit (PATCH): only what is given changes. Its kind
// never does: a provider's posts and an NGO's claims hang on it.
struct OrganizationChange {
  std::optional<std::string> name;
  std::optional<GeoPoint> position;  // lat and lon come together
};

struct ClaimRequest {
  int64_t ngo_id = 0;
  int64_t version = 0;  // the version the claimer saw; the optimistic lock
};

// The driver's pickup: the code the provider gave, and what was taken.
struct PickUpRequest {
  int64_t ngo_id = 0;
  std::string handover_code;
  double actual_kg = 0;
};

// Limits that requests are held to. Kept in one place so docs/openapi.yaml
// and the tests can quote them.
struct Limits {
  static constexpr size_t kNameMax = 200;
  static constexpr size_t kDescriptionMax = 1000;
  static constexpr size_t kInstructionsMax = 500;
  static constexpr double kQuantityKgMax = 10000;
  static constexpr int64_t kPortionsMax = 100000;
  static constexpr int kBestBeforeMaxDays = 30;
  static constexpr int kClockSkewMinutes = 5;  // a device may be this far ahead
};

// The deepest nesting accepted in JSON from outside (HTTP bodies, device
// messages, config files). nlohmann-json copies and serialises values
// recursively: a 64 KB message of '[' nests 32,000 deep and can run a
// thread out of stack (it does under AddressSanitizer at 10,000). The
// documents here nest 3 or 4 deep.
constexpr int kMaxJsonDepth = 32;

// How deep `text` nests objects and arrays (brackets inside strings do not
// count); for any text, valid JSON or not, without parsing it.
int JsonDepth(std::string_view text);

// Untrusted JSON text whose top level must be an object. kInvalidArgument,
// the message starting with `what`, if it is not JSON, not an object, or
// nests deeper than kMaxJsonDepth.
Result<nlohmann::json> ParseJsonObject(std::string_view text, std::string_view what);

Result<NewOrganization> ParseNewOrganization(std::string_view body);
Result<OrganizationChange> ParseOrganizationChange(std::string_view body);
// `now` bounds the dates: best_before must be in the future and within
// kBestBeforeMaxDays, prepared_at not in the future (beyond kClockSkewMinutes).
Result<SurplusDraft> ParseSurplusDraft(std::string_view body, Timestamp now);
// The same, from a body already parsed (the MQTT door's envelope body).
Result<SurplusDraft> ParseSurplusDraftJson(const nlohmann::json& body, Timestamp now);
Result<ClaimRequest> ParseClaimRequest(std::string_view body);
// {"ngo_id","handover_code","actual_kg"} (HTTP). The MQTT door passes the
// body without ngo_id and sets it from the device: `ngo` non-zero means
// "ngo_id is not allowed in the body, use this".
Result<PickUpRequest> ParsePickUpRequestJson(const nlohmann::json& body, int64_t ngo = 0);
Result<PickUpRequest> ParsePickUpRequest(std::string_view body);
// {"ngo_id": N}: accept, decline, assign.
Result<int64_t> ParseNgoRequest(std::string_view body);
// A vehicle's report: {"lat","lon","free_kg","categories":[...],"open_from":"HH:MM",
// "open_to":"HH:MM","online"}; every field optional, applied over `current`.
Result<Vehicle> ParseVehicleUpdate(std::string_view body, Vehicle current, Timestamp now);

// Stable 64-bit FNV-1a of the canonical form of a request, as 16 hex digits;
// used to refuse an idempotency key reused for a different request.
std::string Fingerprint(std::string_view canonical);

}  // namespace pp
