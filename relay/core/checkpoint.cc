#include "core/checkpoint.h"

#include <algorithm>
#include <charconv>
#include <string_view>

namespace outbox::core {

namespace {
bool parse_id(std::string_view text, std::int64_t& out) {
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && ptr == text.data() + text.size() && !text.empty();
}
}  // namespace

namespace {
constexpr std::string_view kFormat2 = "v2;";

std::string encode_ranges(const std::vector<CheckpointRow>& rows) {
  std::string out;
  for (std::size_t i = 0; i < rows.size();) {
    std::size_t j = i;
    while (j + 1 < rows.size() && rows[j + 1].id == rows[j].id + 1) ++j;
    if (!out.empty()) out += ',';
    out += std::to_string(rows[i].id);
    if (j > i) out += '-' + std::to_string(rows[j].id);
    i = j + 1;
  }
  return out;
}

std::optional<std::vector<std::int64_t>> decode_ranges(std::string_view rest) {
  std::vector<std::int64_t> ids;
  std::int64_t last = 0;
  while (!rest.empty()) {
    auto comma = rest.find(',');
    std::string_view part = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    if (comma != std::string_view::npos && rest.empty()) return std::nullopt;  // "1,"
    auto dash = part.find('-', 1);
    std::int64_t from = 0, to = 0;
    if (!parse_id(part.substr(0, dash), from)) return std::nullopt;
    to = from;
    if (dash != std::string_view::npos && !parse_id(part.substr(dash + 1), to)) return std::nullopt;
    if (to < from || (!ids.empty() && from <= last)) return std::nullopt;  // increasing only
    if (to - from > 10'000'000) return std::nullopt;                       // not one of ours
    for (std::int64_t id = from; id <= to; ++id) ids.push_back(id);
    last = to;
  }
  return ids;
}
}  // namespace

std::string encode_checkpoint(std::vector<CheckpointRow> rows) {
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
  rows.erase(std::unique(rows.begin(), rows.end(),
                         [](const auto& a, const auto& b) { return a.id == b.id; }),
             rows.end());
  std::string out(kFormat2);
  out += encode_ranges(rows);
  out += ';';
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (i > 0) out += ',';
    out += rows[i].event_id;
  }
  return out;
}

std::optional<std::vector<CheckpointRow>> decode_checkpoint(const std::string& text) {
  std::string_view view(text);
  std::vector<CheckpointRow> rows;
  if (view.substr(0, kFormat2.size()) != kFormat2) {  // format 1: ids only
    auto ids = decode_ranges(view);
    if (!ids) return std::nullopt;
    for (auto id : *ids) rows.push_back({id, ""});
    return rows;
  }
  view.remove_prefix(kFormat2.size());
  auto semicolon = view.find(';');
  if (semicolon == std::string_view::npos) return std::nullopt;
  auto ids = decode_ranges(view.substr(0, semicolon));
  if (!ids) return std::nullopt;
  std::string_view events = view.substr(semicolon + 1);
  for (std::size_t i = 0; i < ids->size(); ++i) {
    auto comma = events.find(',');
    if ((comma == std::string_view::npos) != (i + 1 == ids->size())) return std::nullopt;
    std::string_view event = events.substr(0, comma);
    if (event.empty() || event.find(';') != std::string_view::npos) return std::nullopt;
    rows.push_back({(*ids)[i], std::string(event)});
    events = comma == std::string_view::npos ? std::string_view() : events.substr(comma + 1);
  }
  if (!events.empty()) return std::nullopt;
  return rows;
}

}  // namespace outbox::core
