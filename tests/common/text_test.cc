#include "attune/common/text.h"

#include <gtest/gtest.h>

#include <random>

#include "nlohmann/json.hpp"

namespace attune {
namespace {

TEST(SafeText, KeepsValidTextAndReplacesWhatIsNot) {
  EXPECT_EQ(SafeText("h\xc3\xa9llo", 64), "h\xc3\xa9llo");                    // héllo
  EXPECT_EQ(SafeText("\xff\xfe", 64), "??");                                  // not UTF-8
  EXPECT_EQ(SafeText("\xc0\xaf", 64), "??");                                  // overlong '/'
  EXPECT_EQ(SafeText("\xed\xa0\x80", 64), "???");                             // a surrogate
  EXPECT_EQ(SafeText("\xf4\x90\x80\x80", 64), "????");                        // past U+10FFFF
  EXPECT_EQ(SafeText("\xe2\x82", 64), "??");                                  // cut short
  EXPECT_EQ(SafeText(std::string("\x01" "a\tb\n\x7f", 6), 64), "?a\tb??");  // controls
}

TEST(SafeText, CutsAtACharacterBoundaryWithinTheBound) {
  EXPECT_EQ(SafeText("abcdefghij", 10), "abcdefghij");  // fits as it is
  EXPECT_EQ(SafeText("abcdefghijk", 10), "abcdefg\xe2\x80\xa6");
  // é is 2 bytes: 8 bytes leave 5 before the ellipsis, so two of them.
  EXPECT_EQ(SafeText("\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", 8), "\xc3\xa9\xc3\xa9\xe2\x80\xa6");
  // A 4-byte character is kept whole or left out.
  EXPECT_EQ(SafeText("a\xf0\x9f\x98\x80\xf0\x9f\x98\x80", 8), "a\xf0\x9f\x98\x80\xe2\x80\xa6");
  EXPECT_EQ(SafeText("a\xf0\x9f\x98\x80\xf0\x9f\x98\x80", 7), "a\xe2\x80\xa6");
}

// Whatever bytes arrive, the result is within the bound and a JSON writer
// (which throws on invalid UTF-8) takes it.
TEST(SafeText, AnyBytesBecomeBoundedValidUtf8) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 2000; ++trial) {
    std::string in(rng() % 80, '\0');
    for (char& c : in) c = static_cast<char>(rng() % 256);
    const size_t max = 3 + rng() % 40;
    const std::string out = SafeText(in, max);
    ASSERT_LE(out.size(), max);
    EXPECT_NO_THROW(nlohmann::json(out).dump()) << trial;
  }
}

}  // namespace
}  // namespace attune
