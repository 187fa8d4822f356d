// End-to-end TLS 1.3 over any ordered byte pipe (a tunnel stream through relays), through memory
// BIOs: the channel never touches a socket or a loop.
//
// 1. the owner feeds ciphertext from the pipe to OnCiphertext()
// 2. the channel hands plaintext to Handler::OnPlaintext and ciphertext for the pipe to
//    Handler::SendCiphertext (possibly from inside OnCiphertext or Send)
// 3. Send() encrypts plaintext in records of up to 16 KiB
//
// The channel never nests callbacks: a call made from inside a callback (Send from OnPlaintext,
// or OnCiphertext from SendCiphertext when two channels are wired back to back) only queues its
// work, which the running call finishes before it returns. The handler must not destroy the
// channel from inside a callback (defer it, e.g. to the next loop iteration).
//
// Security (docs/protocol.md "Tunnels"): a TLS 1.3 external PSK (identity "rdv-tunnel",
// TLS_AES_128_GCM_SHA256, psk_dhe_ke), or a certificate on the server verified by the client
// against a pinned SHA-256 fingerprint or a CA file. ALPN rdv/1 either way.
#ifndef RDV_COMMON_SECURE_CHANNEL_H_
#define RDV_COMMON_SECURE_CHANNEL_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace rdv {

// The pair id the relay matches on: lowercase hex of
// HMAC-SHA256(secret, "rdv-pair-id-v1" | 0x00 | name), first 32 characters.
std::string PairId(std::string_view secret, std::string_view name);

// The tunnel's external PSK: HMAC-SHA256(secret, "rdv-tunnel-psk-v1" | 0x00 | kind | 0x00 | name),
// 32 bytes; kind is "pair" or "private".
std::string TunnelPsk(std::string_view secret, std::string_view kind, std::string_view name);

struct SecureChannelOptions {
  bool is_client = false;
  // PSK mode when non-empty (32 bytes, from TunnelPsk); certificates are then not used.
  std::string psk;
  // Certificate mode, server: PEM files of its certificate and key.
  std::string certificate_file;
  std::string key_file;
  // Certificate mode, client: exactly one of a pinned SHA-256 fingerprint (64 lowercase hex
  // digits) of the server certificate's DER, or a CA file to verify it against.
  std::string peer_fingerprint;
  std::string peer_ca_file;
};

class SecureChannel {
 public:
  class Handler {
   public:
    virtual ~Handler() = default;
    // Ciphertext for the peer: write it to the pipe, in order.
    virtual void SendCiphertext(std::string_view bytes) = 0;
    // The handshake finished; Send() may be called from now on.
    virtual void OnSecured() = 0;
    virtual void OnPlaintext(std::string_view plaintext) = 0;
    // The handshake or a record failed (wrong PSK, bad certificate, garbage), or the peer sent
    // close_notify (status OK). Called once; the channel is unusable afterwards.
    virtual void OnChannelClosed(const absl::Status& status) = 0;
  };

  // Validates the options (files readable, key matches certificate, PSK length) and builds the
  // OpenSSL state. Nothing is sent or delivered before Start().
  static absl::StatusOr<std::unique_ptr<SecureChannel>> Create(const SecureChannelOptions& options,
                                                               Handler& handler);
  virtual ~SecureChannel() = default;

  // Both ends call it once. A client's first flight goes out through SendCiphertext from here;
  // ciphertext fed before Start() is kept and processed from here.
  virtual void Start() = 0;
  virtual void OnCiphertext(std::string_view bytes) = 0;
  // Before OnSecured the plaintext is buffered and sent once the handshake completes.
  virtual void Send(std::string_view plaintext) = 0;
  // Like Send, but the plaintext waits for the next Send or Flush: a writer of many small pieces
  // (frame headers, payloads) queues them and flushes once, so that they fill whole records.
  virtual void Queue(std::string_view plaintext) = 0;
  virtual void Flush() = 0;
  // Plaintext queued and not yet encrypted.
  virtual size_t queued() const = 0;
  // Sends close_notify once pending plaintext is out; the peer's records are still delivered
  // until its own close_notify (OnChannelClosed with OK). Before OnSecured it abandons the
  // handshake without sending anything and without calling the handler.
  virtual void Close() = 0;
  virtual bool secured() const = 0;
  // True once the records are sealed and opened by TlsRecordLayer rather than OpenSSL.
  virtual bool user_space_records() const = 0;
};

}  // namespace rdv

#endif  // RDV_COMMON_SECURE_CHANNEL_H_
