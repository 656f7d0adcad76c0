// The relay's HTTP endpoint (cpp-httplib): GET /metrics, /healthz, /readyz.
//
// Lifecycle: the constructor binds (port 0: any free port) and serves on a thread of its
// own, two worker threads for requests; the destructor stops and joins. Handlers run on
// those threads: what they call must be thread-safe (metrics::RelayMetrics is).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

namespace outbox::http {

struct Handlers {
  std::function<std::string()> metrics;                   //!< the exposition text
  std::function<bool()> healthy;                          //!< /healthz 200 or 503
  std::function<std::optional<std::string>()> not_ready;  //!< /readyz: nullopt = 200
};

class Server {
 public:
  //! Throws std::runtime_error when it cannot listen on address:port.
  Server(const std::string& address, int port, Handlers handlers);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  //! The port bound (the one chosen when 0 was asked).
  int port() const { return port_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
  std::atomic<bool> returned_{false};
  std::thread thread_;
};

//! The Content-Type of the Prometheus text format.
inline constexpr const char* kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace outbox::http
