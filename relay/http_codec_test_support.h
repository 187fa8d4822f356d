// Helpers shared by the HTTP codec tests: random splits and mutations of byte streams.
#ifndef RDV_RELAY_HTTP_CODEC_TEST_SUPPORT_H_
#define RDV_RELAY_HTTP_CODEC_TEST_SUPPORT_H_

#include <algorithm>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace rdv::http_test {

// Cuts `input` into pieces of 1 to 24 bytes.
inline std::vector<std::string> RandomSplit(std::string_view input, std::mt19937& rng) {
  std::vector<std::string> pieces;
  while (!input.empty()) {
    size_t n = std::uniform_int_distribution<size_t>(1, std::min<size_t>(input.size(), 24))(rng);
    pieces.emplace_back(input.substr(0, n));
    input.remove_prefix(n);
  }
  return pieces;
}

// Applies up to three random edits that matter to HTTP syntax.
inline std::string Mutate(std::string input, std::mt19937& rng) {
  const int mutations = std::uniform_int_distribution<int>(0, 3)(rng);
  for (int i = 0; i < mutations && !input.empty(); ++i) {
    const size_t at = std::uniform_int_distribution<size_t>(0, input.size() - 1)(rng);
    switch (std::uniform_int_distribution<int>(0, 4)(rng)) {
      case 0:  // flip a byte to anything
        input[at] = static_cast<char>(std::uniform_int_distribution<int>(0, 255)(rng));
        break;
      case 1:  // insert a byte that matters to HTTP syntax
        input.insert(at, 1,
                     " \t\r\n:;,0aZ\x7f\x80"[std::uniform_int_distribution<int>(0, 12)(rng)]);
        break;
      case 2:  // delete a range
        input.erase(at, std::uniform_int_distribution<size_t>(1, 8)(rng));
        break;
      case 3:  // duplicate a range
        input.insert(at, input.substr(at, std::uniform_int_distribution<size_t>(1, 16)(rng)));
        break;
      case 4:  // truncate
        input.resize(at);
        break;
    }
  }
  return input;
}

}  // namespace rdv::http_test

#endif  // RDV_RELAY_HTTP_CODEC_TEST_SUPPORT_H_
