// Secrets given by file are read again when a connection is opened (docs/operations/secrets.md).
#include <catch2/catch.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "common/secret_file.h"
#include "config/config.h"
#include "pg/conninfo.h"

using namespace outbox;

namespace {

// A file in a fresh temporary directory, removed with it.
struct TempFile {
  std::filesystem::path dir;
  std::filesystem::path path;
  TempFile() {
    char name[] = "/tmp/outbox-secrets-XXXXXX";
    dir = mkdtemp(name);
    path = dir / "secret";
  }
  ~TempFile() { std::filesystem::remove_all(dir); }
  void write(const std::string& text) const {
    // As the kubelet swaps a mounted Secret: the new content appears whole.
    std::filesystem::path tmp = dir / "secret.new";
    std::ofstream(tmp) << text;
    std::filesystem::rename(tmp, path);
  }
};

}  // namespace

TEST_CASE("a secret file loses its trailing line ends and says why it cannot be read",
          "[secrets]") {
  TempFile f;
  f.write("pa ss\r\n");
  CHECK(common::read_secret_file(f.path.string()) == std::optional<std::string>("pa ss"));
  std::string why;
  CHECK_FALSE(common::read_secret_file((f.dir / "none").string(), &why));
  CHECK_THAT(why, Catch::Contains("No such file"));
  CHECK_FALSE(common::read_secret_file(f.dir.string(), &why));
  CHECK(why == "it is a directory");
}

// Regression: postgres.password_file was read once at start, so a rotated password needed a
// restart; each connection now takes the file's content at the time it is opened.
TEST_CASE("postgres.password_file is read again at each connection", "[secrets][regression]") {
  TempFile f;
  f.write("first\n");
  pg::ConninfoParts parts;
  parts.dsn = "host=localhost dbname=app user=relay";
  parts.password = "first";
  parts.password_file = f.path.string();
  std::string error;
  auto conninfo = pg::Conninfo::make(parts, &error);
  REQUIRE(conninfo);
  CHECK_THAT(conninfo->current(), Catch::Contains("password='first'"));

  f.write("second\n");
  pg::Conninfo copy = *conninfo;  // the store, retention and monitor each hold a copy
  CHECK_THAT(copy.current(), Catch::Contains("password='second'"));
  CHECK_THAT(conninfo->current(), Catch::Contains("password='second'"));
  CHECK_THAT(conninfo->current(), !Catch::Contains("first"));

  // Mid-swap (the file briefly absent): the last password read, not a failed connection.
  std::filesystem::remove(f.path);
  CHECK_THAT(conninfo->current(), Catch::Contains("password='second'"));
  f.write("third");
  CHECK_THAT(conninfo->current(), Catch::Contains("password='third'"));
}

TEST_CASE("a password given inline or in the dsn is used as it is", "[secrets]") {
  pg::ConninfoParts parts;
  parts.dsn = "host=localhost dbname=app password=indsn";
  std::string error;
  auto conninfo = pg::Conninfo::make(parts, &error);
  REQUIRE(conninfo);
  CHECK_THAT(conninfo->current(), Catch::Contains("password='indsn'"));
  parts.dsn = "host=db.example.com dbname=app";  // weak TLS to a remote host: refused
  CHECK_FALSE(pg::Conninfo::make(parts, &error));
  CHECK_THAT(error, Catch::Contains("verify-full"));
}

TEST_CASE("the configuration keeps where each secret file is, to read it again", "[secrets]") {
  config::ParseOptions options;
  options.read_file = [](const std::string& path) -> std::optional<std::string> {
    return "from " + path + "\n";
  };
  auto r = config::parse_config(
      "postgres:\n  dsn: host=localhost\n  password_file: /run/secrets/pg\n"
      "kafka:\n  bootstrap_servers: k:9092\n  secret_files:\n    sasl.password: /run/secrets/k\n",
      options);
  REQUIRE(r.config);
  CHECK(r.config->postgres.password == "from /run/secrets/pg");
  CHECK(r.config->postgres.password_file == "/run/secrets/pg");
  CHECK(r.config->kafka.secret_files.at("sasl.password") == "/run/secrets/k");
}
