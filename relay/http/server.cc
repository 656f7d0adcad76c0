#include "http/server.h"

#include <httplib.h>

#include <chrono>
#include <stdexcept>

#include "common/logging.h"

namespace outbox::http {

struct Server::Impl {
  httplib::Server server;
};

Server::Server(const std::string& address, int port, Handlers handlers)
    : impl_(std::make_unique<Impl>()) {
  httplib::Server& s = impl_->server;
  // Probes and a scraper: two request threads are plenty (httplib's default is 8 or more).
  s.new_task_queue = [] { return new httplib::ThreadPool(2); };
  s.set_read_timeout(5, 0);
  s.set_write_timeout(5, 0);
  s.set_keep_alive_max_count(10);
  s.Get("/metrics", [h = handlers.metrics](const httplib::Request&, httplib::Response& res) {
    res.set_content(h(), kMetricsContentType);
  });
  s.Get("/healthz", [h = handlers.healthy](const httplib::Request&, httplib::Response& res) {
    bool ok = h();
    res.status = ok ? 200 : 503;
    res.set_content(ok ? "ok\n" : "the relay loop has not ticked for 60 s\n", "text/plain");
  });
  s.Get("/readyz", [h = handlers.not_ready](const httplib::Request&, httplib::Response& res) {
    auto reason = h();
    res.status = reason ? 503 : 200;
    res.set_content(reason ? *reason + "\n" : "ready\n", "text/plain");
  });
  if (port == 0) {
    port_ = s.bind_to_any_port(address);
    if (port_ <= 0) throw std::runtime_error("http: cannot listen on " + address + ":0");
  } else {
    if (!s.bind_to_port(address, port)) {
      throw std::runtime_error("http: cannot listen on " + address + ":" + std::to_string(port) +
                               " (http.address, http.port): in use, or not an address here");
    }
    port_ = port;
  }
  thread_ = std::thread([this] {
    impl_->server.listen_after_bind();
    returned_ = true;
  });
  logging::get("http")->info("http: listening on {}:{}", address, port_);
}

Server::~Server() {
  // stop() is a no-op until the listen loop runs: wait for it (it starts at once).
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!impl_->server.is_running() && !returned_ && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  impl_->server.stop();
  thread_.join();
}

}  // namespace outbox::http
