#include "agent/status_command.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "CLI/CLI.hpp"
#include "agent/agent_status.h"
#include "common/str_cat.h"
#include "common/yaml_config.h"

namespace rdv {
namespace {

class Socket {
 public:
  explicit Socket(int fd) : fd_(fd) {}
  ~Socket() {
    if (fd_ >= 0) close(fd_);
  }
  int fd() const { return fd_; }

 private:
  int fd_;
};

absl::StatusOr<int> ConnectTo(const HostPort& where, const std::string& address, int timeout_ms) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* results = nullptr;
  std::string port = std::to_string(where.port);
  if (int rc = getaddrinfo(where.host.c_str(), port.c_str(), &hints, &results); rc != 0) {
    return absl::UnavailableError(StrCat("cannot resolve ", address, ": ", gai_strerror(rc)));
  }
  std::string last_error = "no address";
  int connected = -1;
  for (addrinfo* ai = results; ai != nullptr && connected < 0; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) continue;
    int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd pfd{fd, POLLOUT, 0};
      rc = poll(&pfd, 1, timeout_ms);
      if (rc == 0) {
        errno = ETIMEDOUT;
        rc = -1;
      } else if (rc > 0) {
        int error = 0;
        socklen_t length = sizeof(error);
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length);
        errno = error;
        rc = error == 0 ? 0 : -1;
      }
    }
    if (rc == 0) {
      connected = fd;
    } else {
      last_error = errno == ECONNREFUSED
                       ? "connection refused: nothing listens there (is the agent running with "
                         "admin.listen set to this address?)"
                       : std::strerror(errno);
      close(fd);
    }
  }
  freeaddrinfo(results);
  if (connected < 0)
    return absl::UnavailableError(StrCat("cannot connect to ", address, ": ", last_error));
  return connected;
}

// Waits until `fd` is ready for `events`; false on timeout.
bool WaitFor(int fd, short events, int timeout_ms) {
  pollfd pfd{fd, events, 0};
  return poll(&pfd, 1, timeout_ms) > 0;
}

}  // namespace

absl::StatusOr<std::string> FetchAdminPath(const std::string& address, const std::string& path,
                                           int timeout_ms) {
  absl::StatusOr<HostPort> where = ParseHostPort(address);
  if (!where.ok()) {
    return absl::InvalidArgumentError(StrCat("--admin ", address, ": ", where.status().message()));
  }
  if (where->port == 0) return absl::InvalidArgumentError(StrCat("--admin ", address, ": port 0"));
  absl::StatusOr<int> fd = ConnectTo(*where, address, timeout_ms);
  if (!fd.ok()) return fd.status();
  Socket socket(*fd);

  std::string request =
      StrCat("GET ", path, " HTTP/1.0\r\nHost: ", address, "\r\nConnection: close\r\n\r\n");
  std::string_view pending = request;
  while (!pending.empty()) {
    if (!WaitFor(socket.fd(), POLLOUT, timeout_ms)) {
      return absl::DeadlineExceededError(StrCat(address, ": timed out sending the request"));
    }
    ssize_t n = send(socket.fd(), pending.data(), pending.size(), MSG_NOSIGNAL);
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
      return absl::UnavailableError(StrCat(address, ": ", std::strerror(errno)));
    }
    if (n > 0) pending.remove_prefix(static_cast<size_t>(n));
  }
  std::string response;
  char buffer[16384];
  while (true) {
    if (!WaitFor(socket.fd(), POLLIN, timeout_ms)) {
      return absl::DeadlineExceededError(StrCat(address, ": timed out waiting for the answer"));
    }
    ssize_t n = recv(socket.fd(), buffer, sizeof(buffer), 0);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return absl::UnavailableError(StrCat(address, ": ", std::strerror(errno)));
    }
    response.append(buffer, static_cast<size_t>(n));
    if (response.size() > (64u << 20)) {
      return absl::ResourceExhaustedError(StrCat(address, ": answer larger than 64 MiB"));
    }
  }
  size_t head_end = response.find("\r\n\r\n");
  if (response.compare(0, 7, "HTTP/1.") != 0 || head_end == std::string::npos ||
      response.size() < 12) {
    return absl::DataLossError(StrCat(address,
                                      " did not answer HTTP (is it an agent's admin "
                                      "listener?)"));
  }
  std::string status_line = response.substr(0, response.find("\r\n"));
  std::string body = response.substr(head_end + 4);
  if (status_line.compare(9, 3, "200") != 0) {
    return absl::FailedPreconditionError(
        StrCat(address, " answered '", status_line, "' for ", path, ": ", body));
  }
  return body;
}

int RunStatusCommand(int argc, char** argv) {
  CLI::App app("Prints a running agent's status: its links and tunnels", "rdv-agent status");
  std::string admin;
  bool json = false;
  app.add_option("--admin", admin, "host:port of the agent's admin listener (admin.listen)")
      ->required();
  app.add_flag("--json", json, "print the raw JSON of GET /status");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    return app.exit(error) == 0 ? 0 : 1;
  }
  absl::StatusOr<std::string> body = FetchAdminPath(admin, "/status");
  if (!body.ok()) {
    std::fprintf(stderr, "rdv-agent status: %s\n", std::string(body.status().message()).c_str());
    return 2;
  }
  if (json) {
    std::fputs(body->c_str(), stdout);
    if (!body->empty() && body->back() != '\n') std::fputc('\n', stdout);
    return 0;
  }
  absl::StatusOr<AgentStatus> status = ParseAgentStatusJson(*body);
  if (!status.ok()) {
    std::fprintf(stderr, "rdv-agent status: %s: unexpected answer: %s\n", admin.c_str(),
                 std::string(status.status().message()).c_str());
    return 2;
  }
  std::fputs(FormatAgentStatus(*status).c_str(), stdout);
  return 0;
}

}  // namespace rdv
