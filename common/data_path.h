// The tunnel data path's wire format (docs/protocol.md "Tunnel data path").
//
// A relay that bridges a tunnel between two agents on its own links may offer each of them a
// token (Control TunnelData). An agent dials the relay's agent listener again, in the clear, and
// sends one line:
//
//   RDV-DATA/1 <token, 64 lowercase hex digits>\r\n
//
// The relay answers `OK\r\n` once both ends of the tunnel presented their tokens, and from then
// on copies bytes unchanged between the two connections; or `ERR <reason>\r\n` and closes. The
// connection carries only the tunnel's end-to-end TLS records, so the relay neither decrypts
// nor encrypts them. The first byte tells a data path ('R') from a link's TLS ClientHello (0x16).
#ifndef RDV_COMMON_DATA_PATH_H_
#define RDV_COMMON_DATA_PATH_H_

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace rdv {

inline constexpr size_t kDataPathTokenSize = 32;
inline constexpr std::string_view kDataPathMagic = "RDV-DATA/1 ";
// Longest line either side sends, CRLF included; a longer one is refused.
inline constexpr size_t kMaxDataPathLine = 128;
inline constexpr std::string_view kDataPathOk = "OK\r\n";
// An offer's tokens are good this long; an end still missing then is not waited for.
inline constexpr absl::Duration kDataPathPairTimeout = absl::Seconds(10);
// The relay waits this long for a data path's request line.
inline constexpr absl::Duration kDataPathRequestTimeout = absl::Seconds(5);
// A data path carries no pings (the links did): TCP keepalive on both ends' sockets at the
// relay and at each agent notices a peer gone silently (a host down, a route lost) within
// about idle + interval * count = 30 s, and fails the tunnel as a lost link would.
inline constexpr absl::Duration kDataPathKeepAliveIdle = absl::Seconds(15);
inline constexpr absl::Duration kDataPathKeepAliveInterval = absl::Seconds(5);
inline constexpr int kDataPathKeepAliveCount = 3;

// "RDV-DATA/1 <hex>\r\n" for a kDataPathTokenSize-byte token.
std::string DataPathRequest(std::string_view token);
// "ERR <reason>\r\n", the reason cut to fit kMaxDataPathLine and stripped of CR/LF.
std::string DataPathError(std::string_view reason);

// Where the first line of `buffer` ends (the index after its "\r\n"), 0 when no full line is
// there yet. InvalidArgument when no CRLF appears within kMaxDataPathLine bytes.
absl::StatusOr<size_t> DataPathLineEnd(std::string_view buffer);

// The token (raw bytes) of a request line (with or without its CRLF). InvalidArgument naming
// what is wrong: not a data path request, bad token length, not hex.
absl::StatusOr<std::string> ParseDataPathRequest(std::string_view line);

// A reply line (with or without its CRLF): OK, or FailedPrecondition carrying the relay's
// reason for ERR, or InvalidArgument for anything else.
absl::Status ParseDataPathReply(std::string_view line);

}  // namespace rdv

#endif  // RDV_COMMON_DATA_PATH_H_
