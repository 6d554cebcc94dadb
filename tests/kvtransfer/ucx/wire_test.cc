#include "kvtransfer/ucx/wire.h"

#include <string>

#include "gtest/gtest.h"

namespace tessera::kvtransfer::ucx_wire {
namespace {

Descriptor Sample() {
  Descriptor d;
  d.name = "decode-0";
  d.worker_address = std::string("\x01\x02\x00\x03 address bytes", 19);
  d.regions = {{1, 4096}, {7, 1ull << 33}};
  return d;
}

TEST(UcxWireTest, DescriptorRoundTrips) {
  auto decoded = DecodeDescriptor(EncodeDescriptor(Sample()));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->name, "decode-0");
  EXPECT_EQ(decoded->worker_address, Sample().worker_address);
  ASSERT_EQ(decoded->regions.size(), 2u);
  EXPECT_EQ(decoded->regions[1].id, 7u);
  EXPECT_EQ(decoded->regions[1].length, 1ull << 33);
}

TEST(UcxWireTest, EveryTruncationIsInvalidArgument) {
  const std::string bytes = EncodeDescriptor(Sample());
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_EQ(DecodeDescriptor(bytes.substr(0, n)).status().code(),
              absl::StatusCode::kInvalidArgument)
        << "length " << n;
  }
}

TEST(UcxWireTest, EveryFlippedByteIsInvalidArgument) {
  const std::string bytes = EncodeDescriptor(Sample());
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::string bad = bytes;
    bad[i] ^= 0x5a;
    EXPECT_EQ(DecodeDescriptor(bad).status().code(), absl::StatusCode::kInvalidArgument)
        << "byte " << i;
  }
}

TEST(UcxWireTest, GarbageAndTrailingBytesAreInvalidArgument) {
  EXPECT_EQ(DecodeDescriptor("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeDescriptor("{\"not\": \"ucx\"}").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeDescriptor(std::string(64, '\xff')).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeDescriptor(EncodeDescriptor(Sample()) + "x").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(UcxWireTest, ZeroRegionIdIsRejected) {
  Descriptor d = Sample();
  d.regions.push_back({0, 10});
  EXPECT_EQ(DecodeDescriptor(EncodeDescriptor(d)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(UcxWireTest, HeadersRoundTripAndRejectWrongSizes) {
  DataHeader h{1, 2, 3, 4, 5, 6, 0xfeedfacecafebeefull};
  auto d = DecodeData(EncodeData(h));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->tag, h.tag);
  EXPECT_EQ(d->length, 6u);
  EXPECT_FALSE(DecodeData(EncodeData(h).substr(1)).ok());
  auto a = DecodeAck(EncodeAck({9, 8, 7}));
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->code, 7);
  EXPECT_FALSE(DecodeAck("short").ok());
  auto hello = DecodeHello(EncodeHello({5, 3, 100}));
  ASSERT_TRUE(hello.ok());
  EXPECT_EQ(hello->address_length, 100u);
  auto bye = DecodeBye(EncodeBye({11, 1}));
  ASSERT_TRUE(bye.ok());
  EXPECT_EQ(bye->to_receiver, 1u);
  auto ack = DecodeHelloAck(EncodeHelloAck({4, 2}));
  ASSERT_TRUE(ack.ok());
  EXPECT_EQ(ack->inbound_id, 2u);
}

}  // namespace
}  // namespace tessera::kvtransfer::ucx_wire
