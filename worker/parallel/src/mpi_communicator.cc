#include "attune/parallel/mpi_communicator.h"

#include <mpi.h>

#include <climits>
#include <cstdlib>
#include <mutex>

#include "poll.h"

namespace attune::parallel {
namespace {

using Kind = CollectiveError::Kind;

std::string MpiErrorText(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, len);
}

MPI_Datatype ToMpi(const torch::Tensor& t, const std::string& what) {
  switch (t.scalar_type()) {
    case torch::kFloat: return MPI_FLOAT;
    case torch::kDouble: return MPI_DOUBLE;
    case torch::kLong: return MPI_INT64_T;
    case torch::kInt: return MPI_INT32_T;
    case torch::kByte: return MPI_UINT8_T;
    case torch::kChar: return MPI_INT8_T;
    default:
      throw CollectiveError(Kind::kInvalid, what + ": MPI cannot carry " + DescribeTensor(t));
  }
}

MPI_Op ToMpi(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return MPI_SUM;
    case ReduceOp::kMin: return MPI_MIN;
    case ReduceOp::kMax: return MPI_MAX;
  }
  return MPI_SUM;
}

class MpiCommunicator;

// One collective in flight. The communicator outlives its works (the reducer
// and the trainer wait for every work they launch).
class MpiWork final : public Work {
 public:
  MpiWork(MpiCommunicator* comm, MPI_Request request, std::string what)
      : comm_(comm), request_(request), what_(std::move(what)) {}
  ~MpiWork() override;
  bool IsCompleted() override;
  void Wait(std::chrono::milliseconds timeout) override;

 private:
  MpiCommunicator* comm_;
  MPI_Request request_;
  std::string what_;  // "MPI all-reduce 'gradient bucket 2' (#57, 3.2 MiB Float)"
  bool done_ = false;
};

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator() {
    int initialised = 0;
    MPI_Initialized(&initialised);
    if (!initialised) {
      // Open MPI's non-blocking all-reduce (coll/libnbc) picks a binomial
      // tree (reduce to one rank, then broadcast) for fewer than 4 ranks or
      // in-place buffers — every gradient bucket here — which moves 2-3x
      // the time of the blocking all-reduce at 2 ranks. Reduce-scatter +
      // all-gather (Rabenseifner's; a ring where a buffer has fewer
      // elements than ranks) is on a par with it: measured by
      // experiments/bench/parallel_bench.py. A value the user set wins.
      setenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "3", /*overwrite=*/0);
      int provided = 0;
      int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
      if (rc != MPI_SUCCESS) {
        throw CollectiveError(Kind::kFailed, "MPI_Init_thread: " + MpiErrorText(rc));
      }
      owns_mpi_ = true;
      if (provided < MPI_THREAD_SERIALIZED) {
        // Everything goes through mu_, so FUNNELED would still be wrong only
        // if the autograd hooks ran on another thread; say so and go on.
        std::fprintf(stderr,
                     "attune: MPI provides thread level %d < MPI_THREAD_SERIALIZED; "
                     "collectives must stay on the main thread\n",
                     provided);
      }
    }
    MPI_Comm_dup(MPI_COMM_WORLD, &comm_);
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }

  ~MpiCommunicator() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (broken_.empty()) MPI_Comm_free(&comm_);
    if (owns_mpi_) {
      int finalised = 0;
      MPI_Finalized(&finalised);
      // After a timeout a peer is gone or stuck: MPI_Finalize would wait for
      // it, so leave and let the process exit (the launcher ends the job).
      if (!finalised && broken_.empty()) MPI_Finalize();
    }
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view backend() const override { return "mpi"; }

  std::unique_ptr<Work> AllReduce(torch::Tensor& t, ReduceOp op, std::string_view what) override {
    std::string name = Name("all-reduce", what, t);
    const MPI_Datatype dtype = Check(t, name);
    return Launch(std::move(name), [&](MPI_Request* r) {
      return MPI_Iallreduce(MPI_IN_PLACE, t.data_ptr(), static_cast<int>(t.numel()), dtype,
                            ToMpi(op), comm_, r);
    });
  }

  std::unique_ptr<Work> Broadcast(torch::Tensor& t, int root, std::string_view what) override {
    std::string name = Name("broadcast", what, t);
    const MPI_Datatype dtype = Check(t, name);
    if (root < 0 || root >= size_) {
      throw CollectiveError(Kind::kInvalid, name + ": root " + std::to_string(root) +
                                                " is not a rank of " + std::to_string(size_));
    }
    return Launch(std::move(name), [&](MPI_Request* r) {
      return MPI_Ibcast(t.data_ptr(), static_cast<int>(t.numel()), dtype, root, comm_, r);
    });
  }

  std::unique_ptr<Work> Barrier(std::string_view what) override {
    return Launch(Name("barrier", what, {}), [&](MPI_Request* r) { return MPI_Ibarrier(comm_, r); });
  }

  // For MpiWork: one MPI_Test under the lock.
  bool Test(MPI_Request* request, const std::string& what) {
    std::lock_guard<std::mutex> lock(mu_);
    ThrowIfBroken();
    int flag = 0;
    int rc = MPI_Test(request, &flag, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) Break(Kind::kFailed, what + " failed: " + MpiErrorText(rc));
    return flag != 0;
  }

  [[noreturn]] void TimedOut(const std::string& what, std::chrono::milliseconds timeout) {
    std::lock_guard<std::mutex> lock(mu_);
    ThrowIfBroken();
    Break(Kind::kTimeout, TimeoutMessage(what, timeout, rank_, size_));
  }

 private:
  std::string Name(const char* kind, std::string_view what, const torch::Tensor& t) {
    std::string name = std::string("MPI ") + kind + " '" + std::string(what) + "' (#" +
                       std::to_string(sequence_ + 1);
    if (t.defined()) name += ", " + DescribeTensor(t);
    return name + ")";
  }

  // The tensor's MPI type; throws for a tensor MPI cannot carry.
  MPI_Datatype Check(const torch::Tensor& t, const std::string& name) {
    if (!t.defined() || t.is_cuda() || !t.is_contiguous()) {
      throw CollectiveError(Kind::kInvalid,
                            name + ": needs a defined, contiguous CPU tensor");
    }
    if (t.numel() > INT_MAX) {
      throw CollectiveError(Kind::kInvalid, name + ": more than 2^31 elements");
    }
    return ToMpi(t, name);
  }

  template <typename Start>
  std::unique_ptr<Work> Launch(std::string name, Start start) {
    std::lock_guard<std::mutex> lock(mu_);
    ThrowIfBroken();
    ++sequence_;
    MPI_Request request = MPI_REQUEST_NULL;
    int rc = start(&request);
    if (rc != MPI_SUCCESS) Break(Kind::kFailed, name + " could not start: " + MpiErrorText(rc));
    return std::make_unique<MpiWork>(this, request, std::move(name));
  }

  void ThrowIfBroken() {
    if (!broken_.empty()) {
      throw CollectiveError(broken_kind_, "communicator broken by an earlier error: " + broken_);
    }
  }
  [[noreturn]] void Break(Kind kind, const std::string& message) {
    broken_ = message;
    broken_kind_ = kind;
    throw CollectiveError(kind, message);
  }

  std::mutex mu_;  // every MPI call (MPI_THREAD_SERIALIZED)
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  bool owns_mpi_ = false;
  uint64_t sequence_ = 0;
  std::string broken_;
  Kind broken_kind_ = Kind::kFailed;
};

MpiWork::~MpiWork() = default;  // a request not waited for is left to MPI

bool MpiWork::IsCompleted() {
  if (!done_) done_ = comm_->Test(&request_, what_);
  return done_;
}

void MpiWork::Wait(std::chrono::milliseconds timeout) {
  PollUntil(timeout, [&] { return IsCompleted(); }, [&] { comm_->TimedOut(what_, timeout); });
}

}  // namespace

bool LaunchedAsMpiRanks() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"}) {
    const char* v = std::getenv(var);
    if (v != nullptr && std::atoi(v) > 1) return true;
  }
  return false;
}

std::unique_ptr<Communicator> MakeMpiCommunicator() {
  return std::make_unique<MpiCommunicator>();
}

}  // namespace attune::parallel
