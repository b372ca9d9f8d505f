#include <gtest/gtest.h>

#include "proto/cairn.pb.h"

namespace cairn {
namespace {

TEST(ProtoTest, EnvelopeCarriesAJobSpecRoundTrip) {
  proto::JobSpec spec;
  spec.set_name("fmnist");
  spec.add_command("train");
  spec.add_command("--epochs=3");
  spec.set_ranks(4);
  spec.set_gpus_per_rank(1);
  (*spec.mutable_env())["OMP_NUM_THREADS"] = "1";
  auto* in = spec.add_inputs();
  in->set_path("/data/fmnist");
  in->set_kind("data");
  in->set_sha256(std::string(64, 'a'));

  proto::SubmitJobRequest req;
  *req.mutable_spec() = spec;
  proto::Envelope env;
  env.set_protocol_version(1);
  env.set_client_id("cli-1");
  env.set_request_id(42);
  env.set_method("SubmitJob");
  env.set_payload(req.SerializeAsString());

  const std::string wire = env.SerializeAsString();
  proto::Envelope back;
  ASSERT_TRUE(back.ParseFromString(wire));
  EXPECT_EQ(back.request_id(), 42u);
  EXPECT_EQ(back.method(), "SubmitJob");
  proto::SubmitJobRequest req2;
  ASSERT_TRUE(req2.ParseFromString(back.payload()));
  EXPECT_EQ(req2.spec().name(), "fmnist");
  ASSERT_EQ(req2.spec().command_size(), 2);
  EXPECT_EQ(req2.spec().command(1), "--epochs=3");
  EXPECT_EQ(req2.spec().env().at("OMP_NUM_THREADS"), "1");
  EXPECT_EQ(req2.spec().inputs(0).sha256(), std::string(64, 'a'));
}

TEST(ProtoTest, StatusAndProvenanceRoundTrip) {
  proto::JobStatus st;
  st.set_job_id("j-1");
  st.set_state(proto::JOB_RESTARTING);
  st.set_restarts(2);
  auto* run = st.add_runs();
  run->set_attempt(3);
  run->set_resumed_from_step(400);
  auto* rank = run->add_ranks();
  rank->set_rank(1);
  rank->set_state(proto::RANK_KILLED);
  rank->set_signal(9);

  proto::JobStatus back;
  ASSERT_TRUE(back.ParseFromString(st.SerializeAsString()));
  EXPECT_EQ(back.state(), proto::JOB_RESTARTING);
  EXPECT_EQ(back.runs(0).ranks(0).signal(), 9);

  proto::ProvenanceRecord prov;
  prov.mutable_code()->set_git_commit("abc123");
  prov.mutable_code()->set_dirty(true);
  prov.mutable_code()->set_diff_sha256(std::string(32, '\x01'));
  (*prov.mutable_environment()->mutable_library_versions())["hdf5"] = "1.10.8";
  proto::ProvenanceRecord prov2;
  ASSERT_TRUE(prov2.ParseFromString(prov.SerializeAsString()));
  EXPECT_TRUE(prov2.code().dirty());
  EXPECT_EQ(prov2.environment().library_versions().at("hdf5"), "1.10.8");

  proto::CheckpointCommitReport rep;
  rep.set_step(100);
  rep.set_manifest_digest(std::string(32, '\xff'));
  rep.add_shards()->set_size_bytes(1 << 20);
  proto::CheckpointCommitReport rep2;
  ASSERT_TRUE(rep2.ParseFromString(rep.SerializeAsString()));
  EXPECT_EQ(rep2.manifest_digest(), std::string(32, '\xff'));
  EXPECT_EQ(rep2.shards(0).size_bytes(), 1u << 20);
}

TEST(ProtoTest, GarbageDoesNotParseAsEnvelope) {
  proto::Envelope env;
  // A field header announcing a length-delimited field longer than the buffer.
  const std::string garbage("\x2a\xff\xff\xff\x0f" "abc", 8);
  EXPECT_FALSE(env.ParseFromString(garbage));
}

}  // namespace
}  // namespace cairn
