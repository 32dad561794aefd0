// The privacy policy around the strategy, against hand-computed terms.
#include "attune/coordinator/update_privacy.h"

#include <gtest/gtest.h>

namespace attune::coordinator {
namespace {

PrivacyConfig Config(const std::string& mode) {
  PrivacyConfig c;
  c.mode = mode;
  c.clip_norm = 2.0;
  c.noise_multiplier = 1.5;
  return c;
}

TEST(UpdatePrivacy, OffAsksNothingAndWeighsByExamples) {
  const UpdatePrivacy off(Config("off"));
  EXPECT_FALSE(off.TermsFor(1).has_value());
  EXPECT_FALSE(off.TermsFor(4).has_value());
  EXPECT_TRUE(off.reports_loss());
  EXPECT_DOUBLE_EQ(off.SecureWeight(250), 250.0);
  EXPECT_DOUBLE_EQ(off.SecureWeight(0), 1.0);  // a site that declared none still counts once
}

TEST(UpdatePrivacy, LocalNoisesEachUpdateWithAllOfIt) {
  const UpdatePrivacy local(Config("local"));
  for (int sharing : {1, 4}) {
    auto t = local.TermsFor(sharing);
    ASSERT_TRUE(t.has_value());
    EXPECT_DOUBLE_EQ(t->clip_norm, 2.0);
    EXPECT_DOUBLE_EQ(t->noise_stddev, 3.0) << sharing;  // 1.5 x 2
  }
  EXPECT_FALSE(local.charged_at_unmask());
  EXPECT_FALSE(local.reports_loss());
  EXPECT_DOUBLE_EQ(local.SecureWeight(250), 1.0);
}

TEST(UpdatePrivacy, CentralSharesTheNoiseAmongTheThreshold) {
  const UpdatePrivacy central(Config("central"));
  auto t = central.TermsFor(4);
  ASSERT_TRUE(t.has_value());
  EXPECT_DOUBLE_EQ(t->noise_stddev, 1.5);  // 3 / sqrt(4): any 4 together add variance 9
  EXPECT_DOUBLE_EQ(central.TermsFor(1)->noise_stddev, 3.0);  // in the clear: all of it
  EXPECT_TRUE(central.charged_at_unmask());
  EXPECT_DOUBLE_EQ(central.noise_multiplier(), 1.5);
}

}  // namespace
}  // namespace attune::coordinator
