#include "common/logging.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <mutex>

namespace outbox::logging {

namespace {

std::mutex g_mutex;
std::shared_ptr<spdlog::sinks::sink> g_sink;
spdlog::level::level_enum g_level = spdlog::level::info;
Format g_format = Format::text;

// %j: the message, escaped so that each line stays valid JSON whatever it says.
class JsonMessageFlag : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    std::string escaped = json_escape(std::string(msg.payload.data(), msg.payload.size()));
    dest.append(escaped.data(), escaped.data() + escaped.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<JsonMessageFlag>();
  }
};

// The level as the configuration spells it ("warn", not spdlog's "warning").
class LevelFlag : public spdlog::custom_flag_formatter {
 public:
  explicit LevelFlag(bool pad) : pad_(pad) {}
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    static constexpr const char* kNames[] = {"trace", "debug",    "info", "warn",
                                             "error", "critical", "off"};
    std::string name = kNames[static_cast<int>(msg.level)];
    if (pad_ && name.size() < 5) name.resize(5, ' ');
    dest.append(name.data(), name.data() + name.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<LevelFlag>(pad_);
  }

 private:
  bool pad_;
};

// One line per record: libpq's and librdkafka's multi-line messages are folded, and
// trailing line breaks dropped, so line-oriented log collectors keep a record whole.
class OneLineMessageFlag : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    std::string out = fold_lines(std::string_view(msg.payload.data(), msg.payload.size()));
    dest.append(out.data(), out.data() + out.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<OneLineMessageFlag>();
  }
};

std::unique_ptr<spdlog::formatter> make_formatter(Format format) {
  auto formatter = std::make_unique<spdlog::pattern_formatter>(spdlog::pattern_time_type::utc);
  if (format == Format::json) {
    formatter->add_flag<JsonMessageFlag>('j');
    formatter->add_flag<LevelFlag>('L', false)
        .set_pattern(R"({"ts":"%Y-%m-%dT%H:%M:%S.%eZ","level":"%L","logger":"%n","msg":"%j"})");
  } else {
    formatter->add_flag<LevelFlag>('L', true);
    formatter->add_flag<OneLineMessageFlag>('q').set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %L [%n] %q");
  }
  return formatter;
}

std::shared_ptr<spdlog::sinks::sink> sink_locked() {
  if (!g_sink) {
    g_sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
    g_sink->set_formatter(make_formatter(g_format));
  }
  return g_sink;
}

}  // namespace

std::string fold_lines(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  bool in_break = false;  // inside a run of white space that holds a line break
  std::size_t run_start = 0;
  for (char c : text) {
    bool space = c == ' ' || c == '\t' || c == '\n' || c == '\r';
    if (!space) {
      if (in_break) out.resize(run_start), out += ' ';
      in_break = false;
      out += c;
      continue;
    }
    if (!in_break && (c == '\n' || c == '\r')) {
      in_break = true;
      run_start = out.size();
      while (run_start > 0 && (out[run_start - 1] == ' ' || out[run_start - 1] == '\t')) {
        --run_start;
      }
    }
    if (!in_break) out += c;
  }
  if (in_break) out.resize(run_start);
  return out;
}

std::string json_escape(const std::string& text) {
  std::string out;
  out.reserve(text.size() + 8);
  for (unsigned char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          static constexpr char kHex[] = "0123456789abcdef";
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 0xf];
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out;
}

void setup(const std::string& level, Format format) {
  std::lock_guard lock(g_mutex);
  g_level = spdlog::level::from_str(level);
  g_format = format;
  sink_locked()->set_formatter(make_formatter(format));
  spdlog::apply_all([](const std::shared_ptr<spdlog::logger>& l) { l->set_level(g_level); });
}

std::shared_ptr<spdlog::logger> get(const std::string& name) {
  std::lock_guard lock(g_mutex);
  if (auto existing = spdlog::get(name)) return existing;
  auto logger = std::make_shared<spdlog::logger>(name, sink_locked());
  logger->set_level(g_level);
  logger->flush_on(spdlog::level::info);
  spdlog::register_logger(logger);
  return logger;
}

}  // namespace outbox::logging
