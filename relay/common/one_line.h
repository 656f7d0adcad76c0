// Error text made fit for one line of a metric label, a status field or a log line.
#pragma once

#include <string>

namespace outbox::common {

//! `text` with every line break ('\n', '\r') replaced by a space and trailing spaces cut
//! (libpq's and libpqxx's messages end with a newline). Unlike logging::fold_lines it keeps
//! runs of white space as they are.
inline std::string one_line(std::string text) {
  for (char& c : text) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  while (!text.empty() && text.back() == ' ') text.pop_back();
  return text;
}

}  // namespace outbox::common
