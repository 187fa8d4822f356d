#include "agent/agent_status.h"

#include <yaml-cpp/yaml.h>

#include "common/str_cat.h"

namespace rdv {
namespace {

// Length of the well-formed UTF-8 sequence at the start of `text`, 0 if there is none.
size_t Utf8SequenceLength(std::string_view text) {
  auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  unsigned char lead = byte(0);
  size_t length = lead < 0x80           ? 1
                  : (lead >> 5) == 0x6  ? 2
                  : (lead >> 4) == 0xe  ? 3
                  : (lead >> 3) == 0x1e ? 4
                                        : 0;
  if (length == 0 || length > text.size()) return 0;
  uint32_t code = length == 1 ? lead : lead & (0x7f >> length);
  for (size_t i = 1; i < length; ++i) {
    if ((byte(i) & 0xc0) != 0x80) return 0;
    code = (code << 6) | (byte(i) & 0x3f);
  }
  static constexpr uint32_t kMinimum[] = {0, 0, 0x80, 0x800, 0x10000};
  if (code < kMinimum[length] || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return 0;
  return length;
}

void AppendField(std::string& out, std::string_view key, std::string_view value, bool first) {
  StrAppend(out, first ? "" : ", ", JsonQuote(key), ": ", JsonQuote(value));
}

absl::StatusOr<std::string> StringField(const YAML::Node& node, const char* key) {
  const YAML::Node value = node[key];
  if (!value) return std::string();
  if (!value.IsScalar()) {
    return absl::InvalidArgumentError(StrCat("'", key, "' is not a string"));
  }
  return value.Scalar();
}

}  // namespace

std::string JsonQuote(std::string_view text) {
  std::string out = "\"";
  while (!text.empty()) {
    unsigned char c = static_cast<unsigned char>(text.front());
    size_t length = Utf8SequenceLength(text);
    if (length == 0) {
      out += "\\ufffd";
      text.remove_prefix(1);
      continue;
    }
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      out += fmt::format("\\u{:04x}", c);
    } else {
      out.append(text.substr(0, length));
    }
    text.remove_prefix(length);
  }
  out += '"';
  return out;
}

std::string RenderAgentStatusJson(const AgentStatus& status) {
  std::string out = StrCat("{", JsonQuote("agent_id"), ": ", JsonQuote(status.agent_id), ", ");
  if (status.draining) {
    StrAppend(out, JsonQuote("draining"), ": true, ", JsonQuote("open_streams"), ": ",
              status.open_streams, ", ");
  }
  StrAppend(out, JsonQuote("links"), ": [");
  for (size_t i = 0; i < status.links.size(); ++i) {
    const AgentLinkStatus& link = status.links[i];
    out += i == 0 ? "{" : ", {";
    AppendField(out, "relay", link.relay, true);
    AppendField(out, "state", link.state, false);
    out += "}";
  }
  StrAppend(out, "], ", JsonQuote("tunnels"), ": [");
  for (size_t i = 0; i < status.tunnels.size(); ++i) {
    const AgentTunnelStatus& tunnel = status.tunnels[i];
    out += i == 0 ? "{" : ", {";
    AppendField(out, "kind", tunnel.kind, true);
    AppendField(out, "name", tunnel.name, false);
    AppendField(out, "role", tunnel.role, false);
    AppendField(out, "state", tunnel.state, false);
    AppendField(out, "peer_agent", tunnel.peer_agent, false);
    StrAppend(out, ", ", JsonQuote("hops"), ": [");
    for (size_t h = 0; h < tunnel.hops.size(); ++h) {
      StrAppend(out, h == 0 ? "" : ", ", JsonQuote(tunnel.hops[h]));
    }
    StrAppend(out, "], ", JsonQuote("streams"), ": ", tunnel.streams);
    AppendField(out, "security", tunnel.security, false);
    if (!tunnel.path.empty()) AppendField(out, "path", tunnel.path, false);
    out += "}";
  }
  out += "]}\n";
  return out;
}

absl::StatusOr<AgentStatus> ParseAgentStatusJson(std::string_view json) {
  // JSON is YAML 1.2 flow style, so yaml-cpp (already a dependency) reads it.
  YAML::Node root;
  try {
    root = YAML::Load(std::string(json));
  } catch (const YAML::Exception& error) {
    return absl::InvalidArgumentError(StrCat("not JSON: ", error.what()));
  }
  if (!root.IsMap()) return absl::InvalidArgumentError("not a JSON object");
  AgentStatus status;
  absl::StatusOr<std::string> agent_id = StringField(root, "agent_id");
  if (!agent_id.ok()) return agent_id.status();
  status.agent_id = *std::move(agent_id);
  try {
    if (const YAML::Node draining = root["draining"]; draining && draining.IsScalar()) {
      status.draining = draining.as<bool>();
    }
    if (const YAML::Node open = root["open_streams"]; open && open.IsScalar()) {
      status.open_streams = open.as<uint64_t>();
    }
  } catch (const YAML::Exception&) {
    return absl::InvalidArgumentError("'draining' or 'open_streams' has the wrong type");
  }
  if (const YAML::Node links = root["links"]; links && links.IsSequence()) {
    for (const YAML::Node& item : links) {
      if (!item.IsMap()) return absl::InvalidArgumentError("a link is not an object");
      AgentLinkStatus link;
      absl::StatusOr<std::string> relay = StringField(item, "relay");
      absl::StatusOr<std::string> state = StringField(item, "state");
      if (!relay.ok()) return relay.status();
      if (!state.ok()) return state.status();
      link.relay = *std::move(relay);
      link.state = *std::move(state);
      status.links.push_back(std::move(link));
    }
  }
  if (const YAML::Node tunnels = root["tunnels"]; tunnels && tunnels.IsSequence()) {
    for (const YAML::Node& item : tunnels) {
      if (!item.IsMap()) return absl::InvalidArgumentError("a tunnel is not an object");
      AgentTunnelStatus tunnel;
      std::pair<const char*, std::string*> fields[] = {{"kind", &tunnel.kind},
                                                       {"name", &tunnel.name},
                                                       {"role", &tunnel.role},
                                                       {"state", &tunnel.state},
                                                       {"peer_agent", &tunnel.peer_agent},
                                                       {"security", &tunnel.security},
                                                       {"path", &tunnel.path}};
      for (auto& [key, field] : fields) {
        absl::StatusOr<std::string> value = StringField(item, key);
        if (!value.ok()) return value.status();
        *field = *std::move(value);
      }
      if (const YAML::Node hops = item["hops"]; hops && hops.IsSequence()) {
        for (const YAML::Node& hop : hops) {
          if (!hop.IsScalar()) return absl::InvalidArgumentError("a hop is not a string");
          tunnel.hops.push_back(hop.Scalar());
        }
      }
      if (const YAML::Node streams = item["streams"]; streams && streams.IsScalar()) {
        try {
          tunnel.streams = streams.as<uint64_t>();
        } catch (const YAML::Exception&) {
          return absl::InvalidArgumentError("'streams' is not a number");
        }
      }
      status.tunnels.push_back(std::move(tunnel));
    }
  }
  return status;
}

std::string FormatAgentStatus(const AgentStatus& status) {
  std::string out = StrCat("agent ", status.agent_id);
  if (status.draining) {
    StrAppend(out, " (draining, ", status.open_streams,
              status.open_streams == 1 ? " open stream)" : " open streams)");
  }
  out += "\n";
  out += status.links.empty() ? "links: none\n" : "links:\n";
  for (const AgentLinkStatus& link : status.links) {
    StrAppend(out, "  ", link.relay, " ", link.state, "\n");
  }
  out += status.tunnels.empty() ? "tunnels: none\n" : "tunnels:\n";
  for (const AgentTunnelStatus& tunnel : status.tunnels) {
    StrAppend(out, "  ", tunnel.kind, " ", tunnel.name, " ", tunnel.role, " ", tunnel.state);
    if (!tunnel.peer_agent.empty()) StrAppend(out, " peer ", tunnel.peer_agent);
    if (!tunnel.hops.empty()) {
      out += " via ";
      for (size_t i = 0; i < tunnel.hops.size(); ++i) {
        StrAppend(out, i == 0 ? "" : " -> ", tunnel.hops[i]);
      }
    }
    StrAppend(out, " (", tunnel.security.empty() ? "?" : tunnel.security, ", ", tunnel.streams,
              tunnel.streams == 1 ? " stream" : " streams",
              tunnel.path == "data" ? ", data path)" : ")");
    out += "\n";
  }
  return out;
}

}  // namespace rdv
