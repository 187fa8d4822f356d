#include "relay/tunnel_data_path.h"

#include <openssl/rand.h>

#include <array>
#include <utility>

#include "common/metrics.h"
#include "common/str_cat.h"
#include "relay/data_path_splice.h"
#include "relay/relay.h"
#include "relay/relay_worker.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

Counter& Results(std::string_view result) {
  return CounterOf("rdv_tunnel_data_paths_total",
                   "Tunnel data path connections refused, by reason, and pairs spliced",
                   StrCat("result=\"", result, "\""));
}
Counter& Offers() {
  static Counter& counter =
      CounterOf("rdv_tunnel_data_offers_total", "Tunnel data paths offered to pairs of agents");
  return counter;
}

std::string NewToken() {
  std::string token(kDataPathTokenSize, '\0');
  // RAND_bytes fails only when the generator cannot be seeded, which OpenSSL reports at
  // start-up already; a relay that got this far has a seeded generator.
  int ok =
      RAND_bytes(reinterpret_cast<unsigned char*>(token.data()), static_cast<int>(token.size()));
  if (ok != 1) spdlog::error("data path token: RAND_bytes failed");
  return token;
}

}  // namespace

// One offer, on its owner worker's loop: the two ends as they arrive, then their splice.
class DataPathOffer : public RelaySession {
 public:
  DataPathOffer(RelayWorker& worker, std::string label, const DataPathTokens& tokens)
      : worker_(worker),
        label_(std::move(label)),
        tokens_{tokens.opener, tokens.far_end},
        timer_(new uv_timer_t) {
    uv_timer_init(worker.loop(), timer_);
    timer_->data = this;
    for (Waiting& waiting : waiting_) waiting.offer = this;
  }
  // Spliced, it holds a drain like a client session: its agents retire the tunnel once the
  // streams in it end. Waiting for its ends, it does not (it times out).
  bool HoldsDrain() const override { return splice_ != nullptr; }
  ~DataPathOffer() override {
    timer_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(timer_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
    Forget();
    for (Waiting& waiting : waiting_) {
      if (waiting.end.connection) waiting.end.connection->Close();
    }
    splice_.reset();  // closes a splice still running (relay shutdown)
  }

  void Start() {
    uint64_t timeout_ms = static_cast<uint64_t>(
        absl::ToInt64Milliseconds(worker_.relay().data_paths().pair_timeout()));
    uv_timer_start(
        timer_,
        [](uv_timer_t* t) {
          if (t->data) static_cast<DataPathOffer*>(t->data)->OnPairTimeout();
        },
        timeout_ms, 0);
  }

  // End `end` (0 opener, 1 far end) arrived with its token, already taken from the registry.
  void Arrive(int end, std::unique_ptr<TcpConnection> connection, std::string early) {
    tokens_[end].clear();
    Waiting& waiting = waiting_[end];
    waiting.end.connection = std::move(connection);
    waiting.end.early = std::move(early);
    Waiting& other = waiting_[1 - end];
    if (!other.end.connection) {
      // Read while waiting: an end that gives up (EOF, reset) is noticed at once.
      waiting.end.connection->Start(waiting);
      return;
    }
    uv_timer_stop(timer_);
    Results("spliced").Inc();
    spdlog::info("data path {} spliced: {} <-> {}", label_,
                 waiting_[0].end.connection->peer_address(),
                 waiting_[1].end.connection->peer_address());
    splice_ = std::make_unique<DataPathSplice>(
        std::move(waiting_[0].end), std::move(waiting_[1].end), label_,
        worker_.config().tunnel_tap_file, [this](const absl::Status&) { worker_.Finish(this); });
    splice_->Start();
  }

 private:
  // An end that arrived first, read until its partner comes.
  struct Waiting : TcpConnection::Handler {
    DataPathOffer* offer = nullptr;
    DataPathSplice::End end;
    void OnRead(std::string_view data) override {
      // The protocol has an end send nothing before OK; keep what came, and stop reading
      // past the splice's watermark (the rest waits in the socket).
      end.early.append(data);
      if (end.early.size() > kDataPathHighWatermark) end.connection->PauseReading();
    }
    void OnEof() override { offer->Left(*this, "closed while waiting for the other end"); }
    void OnError(const absl::Status& status) override {
      offer->Left(*this, std::string(status.message()));
    }
  };

  void Left(Waiting& waiting, const std::string& why) {
    spdlog::info("data path {}: {} left before the other end arrived: {}", label_,
                 waiting.end.connection->peer_address(), why);
    waiting.end.connection->Close();
    Done();
  }

  void OnPairTimeout() {
    bool any = false;
    for (Waiting& waiting : waiting_) {
      if (!waiting.end.connection) continue;
      any = true;
      RefuseDataPath(*waiting.end.connection, "partner_timeout", kDataPathPartnerMissing);
    }
    if (!any) spdlog::info("data path {}: offer expired, neither end came", label_);
    Done();
  }

  // The offer is over: its tokens are forgotten, and it is destroyed after the current
  // callbacks.
  void Done() {
    if (done_) return;
    done_ = true;
    uv_timer_stop(timer_);
    Forget();
    worker_.Finish(this);
  }

  void Forget() {
    for (std::string& token : tokens_) {
      if (token.empty()) continue;
      worker_.relay().data_paths().Remove(token);
      token.clear();
    }
  }

  RelayWorker& worker_;
  const std::string label_;
  std::array<std::string, 2> tokens_;  // not yet presented ("" once taken or forgotten)
  std::array<Waiting, 2> waiting_;
  std::unique_ptr<DataPathSplice> splice_;
  uv_timer_t* timer_;
  bool done_ = false;
};

void DataPathRegistry::Add(const std::string& token, Ticket ticket) {
  absl::MutexLock lock(&mu_);
  tickets_[token] = ticket;
}

int DataPathRegistry::WorkerOf(std::string_view token) const {
  absl::MutexLock lock(&mu_);
  auto it = tickets_.find(AbslView(token));
  return it == tickets_.end() ? -1 : it->second.worker;
}

std::optional<DataPathRegistry::Ticket> DataPathRegistry::Take(std::string_view token, int worker) {
  absl::MutexLock lock(&mu_);
  auto it = tickets_.find(AbslView(token));
  if (it == tickets_.end() || it->second.worker != worker) return std::nullopt;
  Ticket ticket = it->second;
  tickets_.erase(it);
  return ticket;
}

void DataPathRegistry::Remove(std::string_view token) {
  absl::MutexLock lock(&mu_);
  tickets_.erase(AbslView(token));
}

absl::Duration DataPathRegistry::pair_timeout() const {
  absl::MutexLock lock(&mu_);
  return pair_timeout_;
}

absl::Duration DataPathRegistry::request_timeout() const {
  absl::MutexLock lock(&mu_);
  return request_timeout_;
}

void DataPathRegistry::set_timeouts_for_test(absl::Duration pair, absl::Duration request) {
  absl::MutexLock lock(&mu_);
  pair_timeout_ = pair;
  request_timeout_ = request;
}

DataPathTokens OfferDataPath(RelayWorker& owner, std::string label) {
  DataPathTokens tokens{NewToken(), NewToken()};
  auto offer = std::make_unique<DataPathOffer>(owner, std::move(label), tokens);
  DataPathOffer* raw = offer.get();
  DataPathRegistry& registry = owner.relay().data_paths();
  registry.Add(tokens.opener, {owner.index(), raw, 0});
  registry.Add(tokens.far_end, {owner.index(), raw, 1});
  owner.Adopt(std::move(offer));
  raw->Start();
  Offers().Inc();
  return tokens;
}

void PresentDataPathToken(RelayWorker& worker, std::unique_ptr<TcpConnection> connection,
                          std::string token, std::string early) {
  DataPathRegistry& registry = worker.relay().data_paths();
  int owner = registry.WorkerOf(token);
  if (owner >= 0 && owner != worker.index()) {
    // The offer lives on another loop: the socket moves there, once.
    std::string peer = connection->peer_address();
    absl::StatusOr<int> fd = connection->DetachFd();
    if (!fd.ok()) {
      connection->Close();
      return;
    }
    Handoff handoff;
    handoff.kind = Handoff::Kind::kDataPath;
    handoff.fd = *fd;
    handoff.peer_address = std::move(peer);
    handoff.bytes = std::move(early);
    handoff.data_path_token = std::move(token);
    worker.relay().worker(owner).HandOff(std::move(handoff));
    return;
  }
  std::optional<DataPathRegistry::Ticket> ticket = registry.Take(token, worker.index());
  if (!ticket) {
    RefuseDataPath(*connection, "unknown_token", kUnknownDataPathToken);
    return;
  }
  ticket->offer->Arrive(ticket->end, std::move(connection), std::move(early));
}

void RefuseDataPath(TcpConnection& connection, std::string_view result, std::string_view reason) {
  Results(result).Inc();
  spdlog::info("data path from {} refused ({}): {}", connection.peer_address(), result, reason);
  connection.Write(DataPathError(reason));
  connection.Close();
}

}  // namespace rdv
