// JSON forms of domain values, as the API and the outbox show them.
// Field names match docs/openapi.yaml.
#pragma once

#include <nlohmann/json.hpp>

#include "common/domain.h"
#include "common/validation.h"
#include "common/vehicle.h"

namespace pp {

nlohmann::json ToJson(const Organization& o);
nlohmann::json ToJson(const SurplusDraft& d);  // canonical request form
nlohmann::json ToJson(const Surplus& s);
nlohmann::json ToJson(const HistoryEntry& h);
// The small form a conflict carries: what the loser needs to show the truth.
nlohmann::json StateJson(const Surplus& s);
nlohmann::json ToJson(const Vehicle& v);
nlohmann::json ToJson(const Device& d);  // a device holds no secret: only its public key

}  // namespace pp
