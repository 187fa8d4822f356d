#include "relay/tunnel_tap.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>

#include "absl/synchronization/mutex.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

// One file per path, opened once (in-process tests run relays with different files).
class TunnelTap {
 public:
  static TunnelTap& Get() {
    static TunnelTap* tap = new TunnelTap;  // never destroyed: workers may write until exit
    return *tap;
  }
  void Append(const std::string& path, std::string_view bytes) {
    absl::MutexLock lock(&mu_);
    auto [it, first] = files_.try_emplace(path, nullptr);
    if (first) {
      it->second = std::fopen(path.c_str(), "ab");
      if (it->second == nullptr) {
        spdlog::error("tunnel_tap_file {}: cannot open: {}", path, std::strerror(errno));
      }
    }
    if (it->second == nullptr) return;
    std::fwrite(bytes.data(), 1, bytes.size(), it->second);
    std::fflush(it->second);
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, FILE*> files_ ABSL_GUARDED_BY(mu_);  // null = could not open
};

}  // namespace

void TapAppend(const std::string& path, std::string_view bytes) {
  if (!path.empty() && !bytes.empty()) TunnelTap::Get().Append(path, bytes);
}

}  // namespace rdv
