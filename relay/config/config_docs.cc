// outbox-relay-config-docs: writes relay/config/example.yaml and
// docs/reference/configuration.md from the key table, or with --check reports which of the
// committed copies is not current (exit 1).
//   outbox-relay-config-docs [--check] SOURCE_DIR
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "config/reference.h"

int main(int argc, char** argv) {
  using namespace outbox::config;
  bool check = argc == 3 && std::string(argv[1]) == "--check";
  if (argc != 2 && !check) {
    std::fprintf(stderr, "usage: outbox-relay-config-docs [--check] SOURCE_DIR\n");
    return 2;
  }
  std::filesystem::path root = argv[argc - 1];
  int status = 0;
  for (auto [path, text] :
       {std::pair{kExamplePath, example_yaml()}, std::pair{kReferencePath, reference_markdown()}}) {
    std::filesystem::path file = root / path;
    if (check) {
      std::ifstream in(file, std::ios::binary);
      std::stringstream committed;
      committed << in.rdbuf();
      if (!in || committed.str() != text) {
        std::fprintf(stderr, "%s is not current: run cmake --build build --target config-docs\n",
                     path);
        status = 1;
      }
      continue;
    }
    std::filesystem::create_directories(file.parent_path());
    std::ofstream out(file, std::ios::binary);
    out << text;
    if (!out) {
      std::fprintf(stderr, "cannot write %s\n", file.c_str());
      return 1;
    }
    std::printf("wrote %s\n", path);
  }
  return status;
}
