#include "coordinator/service.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "common/io.h"

namespace cairn::coord {
namespace {

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("cairn_service_" + io::RandomSuffix());
    std::filesystem::create_directories(dir_);
    auto s = StateStore::Open((dir_ / "state.db").string());
    ASSERT_TRUE(s);
    store_ = std::move(*s);
    service_ = std::make_unique<Service>(store_.get(), "secret-token", [this] { return now_++; });
  }
  void TearDown() override {
    service_.reset();
    store_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  proto::Envelope Request(const std::string& method, const google::protobuf::Message& payload,
                          uint64_t id, std::string token = "secret-token") {
    proto::Envelope e;
    e.set_protocol_version(1);
    e.set_client_id("test-client");
    e.set_request_id(id);
    e.set_method(method);
    e.set_payload(payload.SerializeAsString());
    e.set_auth_token(std::move(token));
    return e;
  }
  proto::SubmitJobRequest Submit(uint32_t ranks) {
    proto::SubmitJobRequest r;
    r.mutable_spec()->add_command("/bin/true");
    r.mutable_spec()->set_ranks(ranks);
    return r;
  }

  std::filesystem::path dir_;
  std::unique_ptr<StateStore> store_;
  std::unique_ptr<Service> service_;
  int64_t now_ = 1000;
};

TEST_F(ServiceTest, SubmitIsIdempotentPerRequestId) {
  auto a = service_->Handle(Request("SubmitJob", Submit(2), 1));
  auto b = service_->Handle(Request("SubmitJob", Submit(2), 1));  // the retry
  auto c = service_->Handle(Request("SubmitJob", Submit(2), 2));  // a new request
  ASSERT_FALSE(a.has_error()) << a.error().message();
  proto::SubmitJobReply ra, rb, rc;
  ASSERT_TRUE(ra.ParseFromString(a.payload()));
  ASSERT_TRUE(rb.ParseFromString(b.payload()));
  ASSERT_TRUE(rc.ParseFromString(c.payload()));
  EXPECT_EQ(ra.job_id(), rb.job_id());
  EXPECT_NE(ra.job_id(), rc.job_id());
  EXPECT_TRUE(a.is_reply());
  EXPECT_EQ(a.request_id(), 1u);
  proto::ListJobsRequest all;
  all.set_include_finished(true);
  auto list = service_->Handle(Request("ListJobs", all, 3));
  proto::ListJobsReply lr;
  ASSERT_TRUE(lr.ParseFromString(list.payload()));
  EXPECT_EQ(lr.jobs_size(), 2);
  EXPECT_EQ(lr.jobs(0).spec().launcher(), "env");  // defaults filled in
  EXPECT_EQ(lr.jobs(0).state(), proto::JOB_PENDING);
}

TEST_F(ServiceTest, CancelTwiceIsOneCancellation) {
  auto s = service_->Handle(Request("SubmitJob", Submit(1), 1));
  proto::SubmitJobReply sr;
  ASSERT_TRUE(sr.ParseFromString(s.payload()));
  proto::CancelJobRequest cancel;
  cancel.set_job_id(sr.job_id());
  auto c1 = service_->Handle(Request("CancelJob", cancel, 2));
  auto c2 = service_->Handle(Request("CancelJob", cancel, 2));
  auto c3 = service_->Handle(Request("CancelJob", cancel, 3));  // new id, already final
  for (const auto* e : {&c1, &c2, &c3}) {
    ASSERT_FALSE(e->has_error()) << e->error().message();
    proto::CancelJobReply r;
    ASSERT_TRUE(r.ParseFromString(e->payload()));
    EXPECT_EQ(r.job().state(), proto::JOB_CANCELLED);
  }
  auto events = store_->Events(sr.job_id());
  ASSERT_TRUE(events);
  int cancels = 0;
  for (const auto& e : *events) cancels += e.kind == "cancelled";
  EXPECT_EQ(cancels, 1);
}

TEST_F(ServiceTest, BadRequestsGetNamedErrors) {
  auto unauth = service_->Handle(Request("ListJobs", proto::ListJobsRequest(), 1, "wrong"));
  ASSERT_TRUE(unauth.has_error());
  EXPECT_EQ(unauth.error().code(), "PERMISSION_DENIED");
  EXPECT_EQ(unauth.error().message().find("wrong"), std::string::npos);  // token not echoed

  auto bad_spec = service_->Handle(Request("SubmitJob", Submit(0), 2));
  ASSERT_TRUE(bad_spec.has_error());
  EXPECT_EQ(bad_spec.error().code(), "INVALID_ARGUMENT");
  EXPECT_NE(bad_spec.error().message().find("job spec: ranks: must be at least 1"),
            std::string::npos);

  proto::SubmitJobRequest launcher = Submit(1);
  launcher.mutable_spec()->set_launcher("ssh");
  auto bad_launcher = service_->Handle(Request("SubmitJob", launcher, 3));
  EXPECT_NE(bad_launcher.error().message().find("launcher: 'ssh' is not mpi or env"),
            std::string::npos);

  proto::SubmitJobRequest ckpt = Submit(1);
  ckpt.mutable_spec()->set_checkpoint_dir("runs/ckpt");
  auto bad_ckpt = service_->Handle(Request("SubmitJob", ckpt, 8));
  ASSERT_TRUE(bad_ckpt.has_error());
  EXPECT_EQ(bad_ckpt.error().code(), "INVALID_ARGUMENT");
  EXPECT_NE(bad_ckpt.error().message().find(
                "job spec: checkpoint_dir: 'runs/ckpt' is not an absolute path"),
            std::string::npos)
      << bad_ckpt.error().message();

  proto::Envelope garbage = Request("SubmitJob", Submit(1), 4);
  garbage.set_payload("\xff\xff\xff not protobuf");
  auto g = service_->Handle(garbage);
  ASSERT_TRUE(g.has_error());
  EXPECT_NE(g.error().message().find("payload is not a SubmitJobRequest"), std::string::npos);

  auto unknown = service_->Handle(Request("Explode", proto::ListJobsRequest(), 5));
  EXPECT_NE(unknown.error().message().find("unknown method 'Explode'"), std::string::npos);

  proto::GetJobRequest missing;
  missing.set_job_id("job-424242");
  auto m = service_->Handle(Request("GetJob", missing, 6));
  EXPECT_EQ(m.error().code(), "NOT_FOUND");

  proto::ListJobsRequest all;
  all.set_include_finished(true);
  proto::ListJobsReply lr;
  ASSERT_TRUE(lr.ParseFromString(service_->Handle(Request("ListJobs", all, 7)).payload()));
  EXPECT_EQ(lr.jobs_size(), 0);  // nothing was created by the bad requests
}

TEST_F(ServiceTest, NodesRegisterHeartbeatAndGoLostAfterTheTimeout) {
  proto::RegisterNodeRequest reg;
  reg.set_node_id("n1");
  reg.set_address("198.18.0.11");
  reg.mutable_resources()->set_cpus(8);
  reg.mutable_resources()->add_gpus()->set_index(0);
  auto r = service_->Handle(Request("RegisterNode", reg, 1));
  ASSERT_FALSE(r.has_error()) << r.error().message();
  proto::RegisterNodeReply rr;
  ASSERT_TRUE(rr.ParseFromString(r.payload()));
  EXPECT_EQ(rr.heartbeat_interval_ms(), 1000u);
  auto nodes = [&] {
    proto::ListNodesReply lr;
    EXPECT_TRUE(lr.ParseFromString(service_->Handle(Request("ListNodes", proto::ListNodesRequest(), 99)).payload()));
    return lr;
  };
  ASSERT_EQ(nodes().nodes_size(), 1);
  EXPECT_TRUE(nodes().nodes(0).alive());
  EXPECT_EQ(nodes().nodes(0).gpus_free(), 1u);
  proto::HeartbeatRequest hb;
  hb.set_node_id("n1");
  EXPECT_FALSE(service_->Handle(Request("Heartbeat", hb, 2)).has_error());
  now_ += 6000;  // past the 5 s node timeout
  service_->Tick();
  EXPECT_FALSE(nodes().nodes(0).alive());
  EXPECT_FALSE(service_->Handle(Request("Heartbeat", hb, 3)).has_error());
  EXPECT_TRUE(nodes().nodes(0).alive());  // back
  proto::HeartbeatRequest stranger;
  stranger.set_node_id("n9");
  auto st = service_->Handle(Request("Heartbeat", stranger, 4));
  ASSERT_TRUE(st.has_error());
  EXPECT_EQ(st.error().code(), "FAILED_PRECONDITION");
  // Submits are now checked against the registered nodes.
  proto::SubmitJobRequest big = Submit(1);
  big.mutable_spec()->set_gpus_per_rank(2);
  auto b = service_->Handle(Request("SubmitJob", big, 5));
  ASSERT_TRUE(b.has_error());
  EXPECT_NE(b.error().message().find("asks 2 GPUs per rank, the largest node has 1"),
            std::string::npos) << b.error().message();
}

}  // namespace
}  // namespace cairn::coord
