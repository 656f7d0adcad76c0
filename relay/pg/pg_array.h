// PostgreSQL array literals for parameters such as `id = ANY($1::bigint[])`.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

namespace outbox::pg {

//! {1,2,3}
std::string bigint_array(const std::vector<std::int64_t>& values);

//! {"a","b \"quoted\""}: every element quoted, backslash and double quote escaped.
std::string text_array(const std::vector<std::string>& values);

//! {0,2,5}
std::string int_array(const std::set<int>& values);

}  // namespace outbox::pg
