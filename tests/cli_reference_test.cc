// docs/reference/cli.md against the command line's own declarations (relay/cli/main.cc): every
// command and every option the parser accepts is in the reference.
#include <catch2/catch.hpp>

#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

namespace {

std::string read_source(const std::string& relative) {
  std::ifstream in(std::string(OUTBOX_SOURCE_DIR) + "/" + relative, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::set<std::string> matches(const std::string& text, const std::regex& re) {
  std::set<std::string> found;
  for (std::sregex_iterator it(text.begin(), text.end(), re), end; it != end; ++it) {
    found.insert((*it)[1].str());
  }
  return found;
}

}  // namespace

TEST_CASE("the command-line reference names every command and option the parser accepts", "[cli]") {
  std::string main_cc = read_source("relay/cli/main.cc");
  std::string reference = read_source("docs/reference/cli.md");
  std::set<std::string> commands =
      matches(main_cc, std::regex(R"re(add_subcommand\("([a-z-]+)")re"));
  std::set<std::string> options = matches(
      main_cc, std::regex(R"re((?:add_option|add_flag|set_version_flag)\(\s*"(--[a-z-]+))re"));
  REQUIRE(commands.size() >= 6);
  REQUIRE(options.size() >= 8);
  for (const std::string& command : commands) {
    INFO(command);
    CHECK(reference.find("outbox-relay " + command) != std::string::npos);
  }
  for (const std::string& option : options) {
    INFO(option);
    CHECK(reference.find(option) != std::string::npos);
  }
}
