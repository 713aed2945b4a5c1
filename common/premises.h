// The London food premises file (tests/data/london_food_premises.csv, from
// the FSA's food hygiene ratings; see tests/data/README): the places the
// simulator, the matching benchmark and tests put kiosks and NGO depots.
#pragma once

#include <istream>
#include <string>
#include <vector>

#include "common/domain.h"
#include "common/error.h"

namespace pp {

struct Premises {
  std::string fhrsid;
  std::string role;  // "provider" (a food business) or "receiver" (a food bank)
  std::string name;
  GeoPoint at;
};

// One CSV line, RFC 4180 quoting ("a, b" is one field, "" a quote).
std::vector<std::string> SplitCsvLine(const std::string& line);

// Reads the file's rows after its header
// (fhrsid,role,name,business_type,borough,postcode,lat,lon,rating,rating_date).
// A row without 10 fields or with a bad position is an error naming its line.
Result<std::vector<Premises>> ParsePremisesCsv(std::istream& in);

}  // namespace pp
