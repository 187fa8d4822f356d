// One worker loop of the relay (DESIGN §5): its own libuv loop and thread, its share of the agent
// links and client connections (the kernel spreads accepts over the workers with SO_REUSEPORT).
//
// A client whose service is served only by links on another worker is handed to that worker
// once, as a socket plus the bytes already read; from then on it lives there, so no byte ever
// crosses loops.
#ifndef RDV_RELAY_RELAY_WORKER_H_
#define RDV_RELAY_RELAY_WORKER_H_

#include <uv.h>

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "common/tcp_listener.h"
#include "common/tls.h"
#include "relay/directory.h"
#include "relay/relay_config.h"

namespace rdv {

class Relay;
class AgentLink;

// A client-facing session a worker owns until it finishes (HTTP, tcp splice, admin).
class RelaySession {
 public:
  virtual ~RelaySession() = default;
  // Whether a draining relay waits for this session to end (a client's request or connection in
  // progress). Sessions that only end when idle (udp flows), admin requests and agent listener
  // handshakes do not hold a drain; they close when it ends.
  virtual bool HoldsDrain() const { return true; }
  // While draining: a session that holds nothing and can end without losing anything (an HTTP
  // keep-alive connection between requests) closes itself and returns true.
  virtual bool CloseIfIdle() { return false; }
};

// What a configuration reload changed in the credentials (Relay::Reload), by name.
struct CredentialChanges {
  std::set<std::string> removed;
  std::set<std::string> changed;  // secret, grants, networks or max_links
};

// A client connection moving to another worker.
struct Handoff {
  enum class Kind {
    kHttp,      // an HTTP entrypoint client: a new HttpSession processes `bytes` first
    kSplice,    // route (service_kind, service) again there and splice the client onto a stream
    kSmtp,      // an smtp client routed by its first RCPT: `bytes` is its SmtpHandoffState
    kProxy,     // a proxy entrypoint client with its destination known: ResumeProxyTunnel()
    kDataPath,  // a tunnel data path whose offer lives there: `data_path_token`, then `bytes`
  };
  Kind kind = Kind::kHttp;
  int fd = -1;
  std::string bytes;  // already read from the client: to be processed (kHttp) or sent (kSplice)
  link::ServiceKind service_kind = link::TCP;  // kSplice
  std::string service;                         // kSplice: service name or host
  std::string entrypoint;                      // kSplice: for Open, e.g. "tcp:2020", "tls"
  // The link the sending worker's route picked: kept there unless it went away meanwhile, so
  // the balance policy is applied once per client, not once per hop.
  const StreamCarrier* chosen = nullptr;
  // The client's address when it is not the socket's peer (a PROXY header named it).
  std::string peer_address;
  SSL* tls = nullptr;       // kSmtp after STARTTLS: the client's TLS state, owned by the hand-off
  bool http_proxy = false;  // kHttp: the HttpSession serves the proxy entrypoint
  uint8_t proxy_protocol = 0;   // kProxy: a ProxyProtocol (proxy_refusal.h)
  std::string data_path_token;  // kDataPath: the token it presented (raw bytes)
};

// The client-facing listeners bound on every worker.
enum class Entrypoint { kHttp, kTls, kSmtp, kProxy };

class RelayWorker {
 public:
  // `loop` is the loop to run on (worker 0 uses the main thread's loop); null = make one.
  RelayWorker(Relay& relay, int index, uv_loop_t* loop);
  ~RelayWorker();

  int index() const { return index_; }
  Relay& relay() { return relay_; }
  const RelayConfig& config() const;
  Directory& directory();
  uv_loop_t* loop() const { return loop_; }
  LoopTasks& tasks() { return tasks_; }

  // Binds a listener on this worker's loop. Call before the worker runs, or from its loop.
  absl::StatusOr<TcpListener*> Listen(const std::string& host, uint16_t port,
                                      TcpListener::AcceptCallback on_accept, bool reuse_port);
  void ListenAgents(const std::string& host, uint16_t port);  // after Listen succeeded
  // `listener` (from Listen) serves the admin interface: it stays open while draining.
  void KeepWhileDraining(TcpListener* listener) { admin_listeners_.push_back(listener); }
  // An agent listener connection: a link or a tunnel data path, told by its first byte
  // (relay/agent_listener_session.h).
  void AcceptAgent(uv_stream_t* server);
  // A link on `connection` (accepted at `accepted_ms` of this loop's clock, which bounds its
  // handshake): TLS, then the link protocol (relay/agent_link.h).
  void StartAgentLink(std::unique_ptr<TcpConnection> connection, uint64_t accepted_ms);
  void AcceptEntrypoint(uv_stream_t* server, Entrypoint entrypoint);
  void AcceptAdmin(uv_stream_t* server);
  void AcceptTcp(uv_stream_t* server, const std::string& service, uint16_t port);

  // Routes `name` of `kind` (host routing for http/tls/smtp, by service name for tcp/udp) and
  // splices `client` onto a new stream to it, sending `initial` (bytes already read) first.
  // Hands the client to the worker owning the chosen link when that is another one. No route
  // or no stream: the client is closed and counted, unless `on_refused` is given: then, when
  // this worker finds no route or no link, the client is handed back to it (synchronously,
  // before SpliceToService returns) to refuse in the entrypoint's own protocol and count.
  // `chosen`: the link a route on another worker picked before handing the client here.
  using RefusedCallback =
      std::function<void(std::unique_ptr<TcpConnection> client, RouteResult::Outcome outcome)>;
  void SpliceToService(std::unique_ptr<TcpConnection> client, link::ServiceKind kind,
                       const std::string& name, std::string entrypoint, std::string initial,
                       const RefusedCallback& on_refused = nullptr,
                       const StreamCarrier* chosen = nullptr);

  // Thread-safe: queue a client for this worker.
  void HandOff(Handoff handoff);
  // Thread-safe: run `task` on this worker's loop; false (the task dropped) once the worker is
  // stopping.
  bool Post(std::function<void()> task);
  // Thread-safe: GoAway to agents, close everything; the loop then ends.
  void RequestStop();
  // Thread-safe: close the listeners (all but admin), then run `closed` on this worker's loop;
  // false (nothing runs) when the worker is stopping. The drain's first step, so that no agent
  // told to go away (RequestDrain) can reach a listener of this relay that is still open.
  bool RequestCloseListeners(std::function<void()> closed);
  // Thread-safe: close the listeners (all but admin), GoAway on every agent link, then stop once
  // no session holds the drain (RelaySession::HoldsDrain) or at `deadline_ms` (uv_hrtime() / 1e6
  // clock), whichever comes first. RequestStop() still stops at once.
  void RequestDrain(uint64_t deadline_ms);
  // Sessions holding this worker's drain (read on any thread, updated by the worker).
  size_t drain_holders() const { return drain_holders_.load(); }
  // On this worker's loop, after a reload: closes the links of removed credentials and sends
  // GoAway on those of changed ones (their agents reconnect under the new terms); a link still
  // authenticating with either is closed.
  void ApplyCredentialChanges(const CredentialChanges& changes);
  // On this worker's loop: a tunnel stream bridged here (relay/tunnel_bridge.h) began or ended.
  // Each holds a drain like a client session: its agents retire the tunnel once the streams in
  // it end (docs/protocol.md "GoAway").
  void AddTunnelStream() { ++tunnel_streams_; }
  void RemoveTunnelStream() { --tunnel_streams_; }
  // Runs the loop on a new thread (workers 1..n-1).
  void StartThread();
  void Join();

  void LinkClosed(AgentLink& link);
  // A link finished its handshake or went away. TLS handshakes leave freed memory scattered
  // through the heap; shortly after a burst of them the worker returns it to the OS, so that a
  // relay holding many idle links stays small.
  void NoteLinkChurn();
  void Adopt(std::unique_ptr<RelaySession> session);
  void Finish(RelaySession* session);

 private:
  void DrainHandoffs();
  void Stop();
  void BeginDrain(uint64_t deadline_ms);
  void CloseListeners();  // all but admin
  void CheckDrain();
  size_t CountDrainHolders() const;
  void CloseIdleSessions();
  // Passes `client` to `serve`, first through a ProxyHeaderSession when it comes from a
  // proxy_protocol_from network.
  void ServeClient(std::unique_ptr<TcpConnection> client,
                   std::function<void(std::unique_ptr<TcpConnection>)> serve);
  void ServeEntrypoint(std::unique_ptr<TcpConnection> client, Entrypoint entrypoint);

  Relay& relay_;
  const int index_;
  std::unique_ptr<uv_loop_t> own_loop_;
  uv_loop_t* loop_;
  LoopTasks tasks_;
  uv_async_t* wakeup_;
  uv_timer_t* trim_timer_;
  bool trim_armed_ = false;
  std::thread thread_;
  std::vector<std::unique_ptr<TcpListener>> listeners_;
  std::vector<TcpListener*> admin_listeners_;  // of listeners_: kept open while draining
  absl::flat_hash_map<AgentLink*, std::unique_ptr<AgentLink>> links_;
  absl::flat_hash_map<RelaySession*, std::unique_ptr<RelaySession>> sessions_;
  uint64_t next_link_id_;
  bool stopped_ = false;
  uv_timer_t* drain_timer_ = nullptr;  // while draining: CheckDrain every 100 ms
  uint64_t drain_deadline_ms_ = 0;
  std::atomic<size_t> drain_holders_{0};
  size_t tunnel_streams_ = 0;  // AddTunnelStream - RemoveTunnelStream

  absl::Mutex mu_;
  std::deque<Handoff> handoffs_ ABSL_GUARDED_BY(mu_);
  std::deque<std::function<void()>> posted_ ABSL_GUARDED_BY(mu_);
  bool stop_requested_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace rdv

#endif  // RDV_RELAY_RELAY_WORKER_H_
