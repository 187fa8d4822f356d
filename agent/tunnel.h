// One end of an end-to-end tunnel between two agents through relays (docs/protocol.md
// "Tunnels"); the same class serves the connecting end and the serving end.
//
// 1. setup in the clear: the connecting end opens a stream on a relay link with Open.tunnel
//    (agent id, 32 fresh random bytes, security); the relays append their ids to the hops and
//    bridge it to the serving end, which accepts with its own setup echoing those hops;
// 2. election: with a PSK the end whose nonce is smaller is the TLS client; with a certificate
//    the serving end (which holds it) is the TLS server;
// 3. TLS 1.3 (SecureChannel) over the stream's bytes: the relays forward only ciphertext;
// 4. a nested rdv/1 link over the secured channel (TLS client = agent side, odd ids). Each end
//    sends Hello{agent_id, hops, tunnel_nonce} and closes the tunnel when the peer's differ from
//    the clear-text setup; once the peer's Hello checks out the tunnel is up;
// 5. streams: the connecting end opens one nested stream per local connection
//    (Open{destination, client_address}); the serving end vets the destination (its target, or
//    a SOCKS5 destination inside its allow-list), connects within connect_timeout and splices,
//    or refuses with an OpenError the connecting end can turn into a SOCKS reply.
//
// Flow control: ciphertext goes out through Stream::Write on the relay stream; the nested link
// sees the relay stream's queue as its transport queue and resumes on OnStreamWritable. Bytes
// from the relay stream are returned (Consumed) as soon as they are fed in: the nested link's
// own per-stream windows bound what is buffered behind them.
//
// Data path (docs/protocol.md "Tunnel data path"): a relay that bridges both ends itself may
// offer each a token (OfferDataPath). The end dials the relay again in the clear, sends the
// token and waits for the reply line:
//   link --offer--> offered --OK--> switching --peer's END on the stream--> data
//                      \--ERR, dial failure, EOF, 10 s, bad line--> declined (stays on link)
// On OK every later ciphertext byte goes to the data connection and the relay stream gets END
// after what was already written there. Bytes read on the data connection wait until the peer's
// END on the relay stream, so the tunnel's byte order holds across the switch; then the tunnel
// lives on the data connection (its queue is the nested link's transport queue, its EOF or error
// ends the tunnel). Until OK nothing changes: every byte still goes through the link.
#ifndef RDV_AGENT_TUNNEL_H_
#define RDV_AGENT_TUNNEL_H_

#include <uv.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/agent_config.h"
#include "common/link.h"
#include "common/loop_tasks.h"
#include "common/secure_channel.h"
#include "common/stream_splice.h"
#include "common/tcp_connection.h"

namespace rdv {

inline constexpr size_t kTunnelNonceSize = 32;
inline constexpr size_t kMaxTunnelHops = 16;

// What one end knows about the tunnel before it starts.
struct TunnelEndpoint {
  link::ServiceKind kind = link::PAIR;  // PAIR or PRIVATE
  std::string name;
  std::string pair_id;                     // PAIR: PairId(secret, name)
  std::string security;                    // "psk" or "certificate"
  SecureChannelOptions channel;            // is_client is set by the election
  const ServiceConfig* service = nullptr;  // serving end: target and allow-list (not owned)

  std::string_view kind_name() const { return kind == link::PAIR ? "pair" : "private"; }
};
TunnelEndpoint ServingEndpoint(const ServiceConfig& service);
TunnelEndpoint ConnectingEndpoint(const ConnectConfig& connect);

enum class TunnelRole { kConnect, kServe };

// Step 2: whether this end is the TLS client. Errors: nonces not 32 bytes, equal nonces.
absl::StatusOr<bool> ElectTlsClient(std::string_view security, TunnelRole role,
                                    std::string_view own_nonce, std::string_view peer_nonce);

// Counter label of a refusal: "not_allowed", "host_unreachable", "connection_refused",
// "timed_out", "network_unreachable", "address_not_supported" or "other".
std::string_view OpenErrorLabel(link::OpenError error);
// The OpenError of a failed resolve or connect (TcpConnection / ResolveAsync statuses).
link::OpenError OpenErrorForConnect(const absl::Status& status);

class Tunnel : public StreamHandler,
               public SecureChannel::Handler,
               public LinkTransport,
               public LinkHandler,
               public TcpConnection::Handler,
               public LoopTasks::Client {
 public:
  enum class State { kOpening, kSecuring, kUp, kClosed };
  // Where the tunnel's bytes travel (see the file comment).
  enum class DataPath { kLink, kOffered, kSwitching, kUp, kDeclined };

  class Owner {
   public:
    virtual ~Owner() = default;
    virtual void OnTunnelUp(Tunnel& tunnel) {}
    // The peer sent GoAway: the tunnel takes no new streams; open ones go on.
    virtual void OnTunnelDraining(Tunnel& tunnel) {}
    // Final: the tunnel was refused, failed or was closed by the peer (status says which). The
    // owner destroys it later, never from inside this call.
    virtual void OnTunnelClosed(Tunnel& tunnel, const absl::Status& status) = 0;
  };

  struct Context {
    uv_loop_t* loop = nullptr;
    LoopTasks* tasks = nullptr;
    std::string agent_id;
    absl::Duration connect_timeout = absl::Seconds(5);  // serving end: target connects
    absl::Duration setup_timeout = absl::Seconds(10);   // until the tunnel is up
  };

  // Connecting end: opens the tunnel stream on `relay_link` (a ready agent-side link).
  // Unavailable when the link cannot take a stream now.
  static absl::StatusOr<std::unique_ptr<Tunnel>> Connect(Context context, TunnelEndpoint endpoint,
                                                         Link& relay_link, Owner& owner);
  // Serving end: `stream` is a relay-opened stream carrying Open.tunnel for `endpoint`'s
  // service. Accepts it, or refuses it (bad setup, security mismatch) and returns the error.
  static absl::StatusOr<std::unique_ptr<Tunnel>> Serve(Context context, TunnelEndpoint endpoint,
                                                       Stream& stream, Owner& owner);
  ~Tunnel() override;
  Tunnel(const Tunnel&) = delete;
  Tunnel& operator=(const Tunnel&) = delete;

  // Connecting end, while up: one nested stream towards `destination` ("" = the serving end's
  // target; else "host:port"). nullptr when not up or the nested link takes no more streams.
  Stream* OpenStream(std::string destination, std::string client_address, StreamHandler& handler);
  // Closes the tunnel now (nested streams end with `status`). The owner, who asked, is not told.
  void Close(const absl::Status& status);
  // Announces GoAway on the nested link: the peer opens nothing more here.
  void SendGoAway(std::string_view reason);
  // The owner opens no more streams here (it moved on to another tunnel): GoAway to the peer,
  // and once no nested stream is left the tunnel closes and the owner hears OnTunnelClosed
  // (Cancelled). Used when the relay this tunnel goes through is going away.
  void Retire(std::string_view reason);
  bool retiring() const { return retiring_; }
  // Link::serial() of the relay link the tunnel was set up on: the relay it goes through, also
  // once it moved to the data path (which the same relay splices).
  uint64_t relay_link_serial() const { return relay_link_serial_; }
  // A relay's data path offer (Control TunnelData for the relay stream): dials `relay` (the
  // address the relay link is connected to), presents `token` and, on OK, moves the tunnel's
  // bytes there. Ignored unless the tunnel is open, on its relay stream and has had no offer
  // yet. Any failure leaves the tunnel on the relay stream (logged and counted).
  // Returns whether the offer was taken up.
  bool OfferDataPath(const sockaddr_storage& relay, std::string token);

  TunnelRole role() const { return role_; }
  State state() const { return state_; }
  std::string_view state_name() const;
  const TunnelEndpoint& endpoint() const { return endpoint_; }
  std::string_view kind_name() const { return endpoint_.kind_name(); }
  const std::string& name() const { return endpoint_.name; }
  const std::string& security() const { return endpoint_.security; }
  // Known from the clear-text setup on (empty before).
  const std::string& peer_agent() const { return peer_setup_.agent_id(); }
  const std::vector<std::string>& hops() const { return hops_; }
  size_t stream_count() const { return nested_ ? nested_->stream_count() : 0; }
  // The peer (or the nested link) announced GoAway: no new streams here.
  bool draining() const { return nested_ != nullptr && nested_->peer_going_away(); }
  // Connecting end: the Open was refused (by a relay or by the serving end); its reason.
  bool refused() const { return refused_; }
  const std::string& refusal() const { return refusal_; }
  DataPath data_path() const { return data_path_; }
  // "data" once this end sends on the data path, else "link".
  std::string_view path_name() const;

  // StreamHandler (the relay stream)
  void OnStreamAccepted(Stream& stream) override;
  void OnStreamData(Stream& stream, std::string_view data) override;
  void OnStreamEnd(Stream& stream) override;
  void OnStreamWritable(Stream& stream) override;
  void OnStreamClosed(Stream& stream, const absl::Status& status) override;
  // SecureChannel::Handler
  void SendCiphertext(std::string_view bytes) override;
  void OnSecured() override;
  void OnPlaintext(std::string_view plaintext) override;
  void OnChannelClosed(const absl::Status& status) override;
  // LinkTransport (the nested link's)
  void Send(std::string_view bytes) override;
  size_t QueuedBytes() const override;
  // LinkHandler (the nested link's)
  void OnControl(Link& link, const link::Control& control) override;
  void OnStreamOpen(Link& link, Stream& stream, const link::Open& open) override;
  void OnLinkFailed(Link& link, const absl::Status& status) override;
  void OnStreamRemoved(Link& link) override;
  // TcpConnection::Handler (the data path connection)
  void OnRead(std::string_view data) override;
  void OnEof() override;
  void OnError(const absl::Status& status) override;
  void OnDrained() override;
  // LoopTasks::Client: the nested link's output of this loop iteration, encrypted at once.
  void FlushNow() override;

 private:
  Tunnel(Context context, TunnelEndpoint endpoint, TunnelRole role, Owner& owner);
  // Checks the peer's clear-text setup, takes its hops and runs the election; then builds the
  // channel (not started yet).
  absl::Status TakePeerSetup(const link::TunnelSetup& setup);
  link::TunnelSetup OwnSetup() const;
  void CheckPeerHello(const link::Hello& hello);
  // Retired and no nested stream left: closes (deferred: called from inside the nested link).
  void CloseIfRetiredAndIdle();
  // Ends the tunnel: counts `failure` (a label, "" = not a failure), logs, closes the nested
  // link and resets the relay stream, tells the owner.
  void Fail(const absl::Status& status, std::string_view failure);
  void ArmSetupTimer();

  // Data path: the dial finished (or failed).
  void DataPathConnected(absl::StatusOr<std::unique_ptr<TcpConnection>> connection);
  // OK: later ciphertext goes to the data connection, the relay stream ENDs; `early` (read
  // after the OK line) waits with what follows for the peer's END.
  void SwitchToDataPath(std::string_view early);
  // The peer's END came (or had come) after OK: feeds the held bytes, reads straight on.
  void FinishSwitch();
  // The offer failed before OK: counts `result`, logs, closes the data connection; the tunnel
  // stays on the relay stream.
  void DeclineDataPath(std::string_view result, std::string_view reason);
  // Closes the data connection; its object is freed after the current callbacks.
  void DropDataConnection();
  bool sending_on_data_path() const {
    return data_path_ == DataPath::kSwitching || data_path_ == DataPath::kUp;
  }

  // Serving end: one nested Open.
  void ServeStream(Stream& stream, const link::Open& open);
  void ConnectStream(uint32_t stream_id, const sockaddr_storage& address, std::string target);
  void RefuseStream(Stream& stream, link::OpenError error, std::string_view label,
                    std::string_view reason);
  void RefuseStream(uint32_t stream_id, link::OpenError error, std::string_view label,
                    std::string_view reason);

  const Context context_;
  const TunnelEndpoint endpoint_;
  const TunnelRole role_;
  Owner& owner_;
  State state_ = State::kOpening;
  Stream* relay_stream_ = nullptr;  // null once it closed or was reset
  std::string nonce_;
  link::TunnelSetup peer_setup_;
  std::vector<std::string> hops_;
  bool tls_client_ = false;
  std::unique_ptr<SecureChannel> channel_;
  std::unique_ptr<Link> nested_;
  bool flush_scheduled_ = false;
  bool refused_ = false;
  std::string refusal_;
  bool owner_told_ = false;
  bool retiring_ = false;
  uint64_t relay_link_serial_ = 0;
  uv_timer_t* setup_timer_;
  // Serving end: the splices of accepted nested streams.
  absl::flat_hash_map<StreamSplice*, std::unique_ptr<StreamSplice>> splices_;
  std::shared_ptr<Tunnel*> alive_;  // async callbacks hold a weak_ptr to this token

  // The data path (see the file comment).
  DataPath data_path_ = DataPath::kLink;
  std::string data_relay_;               // "ip:port" dialed, for log lines
  std::string data_token_;               // until sent
  std::unique_ptr<TcpConnection> data_;  // null until dialed, and once dropped
  std::string data_reply_;               // the reply line, until complete
  std::string data_held_;                // read after OK, before the peer's END
  bool peer_ended_ = false;              // the peer's END came on the relay stream
  uv_timer_t* data_path_timer_;          // the offer's deadline (kDataPathPairTimeout)
};

}  // namespace rdv

#endif  // RDV_AGENT_TUNNEL_H_
