#include "common/premises.h"

#include <gtest/gtest.h>

#include <sstream>

namespace pp {
namespace {

const char* kHeader = "fhrsid,role,name,business_type,borough,postcode,lat,lon,rating,rating_date\n";

TEST(PremisesTest, QuotedNamesKeepTheirCommasAndQuotes) {
  EXPECT_EQ(SplitCsvLine(R"(1,"Smith, Jones & ""Co""",x)"),
            (std::vector<std::string>{"1", R"(Smith, Jones & "Co")", "x"}));
  std::istringstream in(std::string(kHeader) +
                        "7,provider,\"Pie, Mash & Eel\",Restaurant,Hackney,E8 1AA,51.54,-0.06,5,2020-01-01\r\n"
                        "8,receiver,Food Bank,Other,Hackney,E8 2BB,51.55,-0.07,,\n");
  auto p = ParsePremisesCsv(in);
  ASSERT_TRUE(p.ok()) << p.error().ToString();
  ASSERT_EQ(p->size(), 2u);
  EXPECT_EQ((*p)[0].name, "Pie, Mash & Eel");
  EXPECT_DOUBLE_EQ((*p)[0].at.lat, 51.54);
  EXPECT_DOUBLE_EQ((*p)[0].at.lon, -0.06);
  EXPECT_EQ((*p)[1].role, "receiver");
}

TEST(PremisesTest, ABadRowIsNamedByItsLine) {
  std::istringstream short_row(std::string(kHeader) + "7,provider,A,R,H,E8,51.5,-0.1,5,2020\n8,provider,B\n");
  auto p = ParsePremisesCsv(short_row);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.error().message.find("line 3"), std::string::npos) << p.error().message;
  std::istringstream bad_lat(std::string(kHeader) + "7,provider,A,R,H,E8,north,-0.1,5,2020\n");
  p = ParsePremisesCsv(bad_lat);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.error().message.find("line 2: lat/lon \"north\""), std::string::npos) << p.error().message;
  std::istringstream empty("");
  EXPECT_FALSE(ParsePremisesCsv(empty).ok());
}

}  // namespace
}  // namespace pp
