// One client connection on the HTTP entrypoint.
//
// 1. read a request head (bounded size and time)            -> 400 / 431 / 408
// 2. route it by Host through the Directory                  -> 404 unknown / 503 no link
// 3. open (or reuse) a stream to the chosen agent, write the head with X-Forwarded-* added,
//    then the body raw
// 4. forward the response raw, counting response ends       -> 502 if the target is unreachable
// 5. next request on the keep-alive connection: same service -> same stream; another service ->
//    wait until the current stream's responses are complete, then switch streams (so responses
//    stay in request order)
// An Upgrade (WebSocket) or CONNECT that the target accepts turns the connection into a raw
// tunnel in both directions.
// A request for `/TUNNEL:<name>/rest` (tunnel_path.h) routes by <name> on any Host, reaches the
// target as `/rest` with `Host: <name>`, and its stream's responses pass through a
// TunnelResponseStage that maps them back under the prefix.
// On the proxy entrypoint (`proxy` = true) each head first passes AdmitProxiedRequest
// (http_proxy_request.h): proxy credentials, absolute-form -> origin-form.
#ifndef RDV_RELAY_HTTP_SESSION_H_
#define RDV_RELAY_HTTP_SESSION_H_

#include <uv.h>

#include <memory>
#include <optional>
#include <string>

#include "common/link.h"
#include "common/tcp_connection.h"
#include "relay/http_codec.h"
#include "relay/relay_worker.h"
#include "relay/tunnel_path.h"
#include "relay/tunnel_response_stage.h"

namespace rdv {

class HttpSession : public RelaySession, public TcpConnection::Handler, public StreamHandler {
 public:
  // `chosen`: the link another worker's route picked for the first request (after a hand-off).
  // `proxy`: the session serves the proxy entrypoint (absolute-form requests, proxy users).
  HttpSession(RelayWorker& worker, std::unique_ptr<TcpConnection> client,
              const StreamCarrier* chosen = nullptr, bool proxy = false);
  ~HttpSession() override;
  // `initial`: bytes already read from the client (a hand-off from another worker).
  // A request in progress (or bytes of one, or a response owed, or a tunnelled connection) holds
  // a drain; a keep-alive connection idle between requests does not.
  bool HoldsDrain() const override;
  bool CloseIfIdle() override;
  void Start(std::string_view initial);

  // TcpConnection::Handler
  void OnRead(std::string_view data) override;
  void OnEof() override;
  void OnError(const absl::Status& status) override;
  void OnDrained() override;
  // StreamHandler
  void OnStreamData(Stream& stream, std::string_view data) override;
  void OnStreamEnd(Stream& stream) override;
  void OnStreamWritable(Stream& stream) override;
  void OnStreamClosed(Stream& stream, const absl::Status& status) override;

 private:
  void Process();
  bool RouteHead();  // false: blocked or finished
  void SendError(int code, std::string_view detail);
  std::string TunnelledHead(const HttpRequestHead& head, const TunnelTarget& tunnel,
                            const std::string& forwarded_for, bool rewrite_html);
  void WriteToClient(std::string_view data, bool end_stream);
  void HandOff(int worker, const HttpRequestHead& head, const StreamCarrier* chosen);
  void DropStream();
  void CloseWhenFlushed();
  void Finish();
  void ArmTimer(uint64_t ms);
  void OnTimer();
  void ReturnCredit();

  RelayWorker& worker_;
  std::unique_ptr<TcpConnection> client_;
  const bool proxy_;
  const HttpEntrypointConfig& http_config_;  // the http section, or its defaults when absent
  HttpRequestFramer framer_;
  std::string input_;             // client bytes not yet framed
  bool head_pending_ = false;     // framer returned a head we have not routed yet
  bool head_bytes_seen_ = false;  // some bytes of the next head have arrived
  Stream* stream_ = nullptr;
  std::string stream_service_;   // name of the service stream_ belongs to
  const StreamCarrier* chosen_;  // see the constructor; used by the first route only
  // Set when stream_ carries /TUNNEL: requests (a stream carries either kind, never both).
  std::unique_ptr<TunnelResponseStage> tunnel_stage_;
  std::optional<HttpResponseFramer> responses_;
  bool response_bytes_for_current_ = false;  // some bytes of the oldest pending response sent
  bool client_eof_ = false;
  bool close_after_response_ = false;
  bool closing_ = false;
  bool finished_ = false;
  bool reading_paused_ = false;
  size_t unreturned_credit_ = 0;
  uv_timer_t* timer_;
};

}  // namespace rdv

#endif  // RDV_RELAY_HTTP_SESSION_H_
