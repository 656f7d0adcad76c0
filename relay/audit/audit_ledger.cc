#include "audit/audit_ledger.h"

#include <bit>
#include <limits>
#include <stdexcept>

namespace outbox::audit {

void Bitset::resize(std::size_t bits) {
  words_.resize((bits + 63) / 64, 0);
  size_ = bits;
}

std::optional<std::int64_t> parse_outbox_id(std::string_view text) {
  if (text.empty() || text.size() > 19) return std::nullopt;
  std::uint64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + static_cast<std::uint64_t>(c - '0');
  }
  if (value > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
    return std::nullopt;
  }
  return static_cast<std::int64_t>(value);
}

std::uint64_t key_hash(std::string_view topic, std::int32_t partition, std::string_view key) {
  std::uint64_t h = 14695981039346656037ULL;
  auto mix = [&h](unsigned char byte) {
    h ^= byte;
    h *= 1099511628211ULL;
  };
  for (char c : topic) mix(static_cast<unsigned char>(c));
  mix(0);  // topic names never hold a NUL byte: the separator keeps topic and key apart
  auto p = static_cast<std::uint32_t>(partition);
  for (int i = 0; i < 4; ++i) mix(static_cast<unsigned char>(p >> (8 * i)));
  for (char c : key) mix(static_cast<unsigned char>(c));
  return h;
}

std::string printable(std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size());
  for (char c : bytes) {
    auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f && c != '\\') {
      out += c;
    } else {
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 0xf];
    }
  }
  return out;
}

std::size_t AuditLedger::extend_to(std::int64_t id) {
  if (first_id_ && id <= last_id_) {
    throw std::invalid_argument("audit rows must come in increasing id order: " +
                                std::to_string(id) + " after " + std::to_string(last_id_));
  }
  if (counts_.messages > 0) throw std::invalid_argument("audit rows must come before messages");
  if (!first_id_) first_id_ = id;
  last_id_ = id;
  std::size_t size = index(id) + 1;
  for (Bitset* b : {&audited_, &skipped_, &published_, &dead_lettered_, &seen_, &seen_twice_}) {
    b->resize(size);
  }
  return size - 1;
}

void AuditLedger::reserve(std::size_t ids) {
  for (Bitset* b : {&audited_, &skipped_, &published_, &dead_lettered_, &seen_, &seen_twice_}) {
    b->reserve(ids);
  }
}

void AuditLedger::add_row(std::int64_t id, bool published, bool dead_lettered, bool by_other) {
  std::size_t i = extend_to(id);
  audited_.set(i);
  ++counts_.rows;
  if (!counts_.first_id) counts_.first_id = id;
  counts_.last_id = id;
  if (published) {
    // A row another publisher sent is left out of the lost check (not in published_).
    if (by_other) {
      ++counts_.published_by_other;
    } else {
      published_.set(i);
    }
    ++counts_.published;
  }
  if (dead_lettered) {
    dead_lettered_.set(i);
    ++counts_.dead_lettered;
  }
  if (!published && !dead_lettered) ++counts_.pending;
}

void AuditLedger::skip_row(std::int64_t id) { skipped_.set(extend_to(id)); }

void AuditLedger::ignore_below(std::int64_t id) { ignore_below_ = id; }

void AuditLedger::ignore_above_up_to(std::int64_t id) { ignore_above_up_to_ = id; }

void AuditLedger::add_vanished(VanishedExample row) {
  if (counts_.messages > 0) {
    throw std::invalid_argument("audit vanished rows must come before messages");
  }
  ++counts_.vanished;
  vanished_ids_.insert(row.id);
  if (counts_.vanished_examples.size() < max_examples_) {
    counts_.vanished_examples.push_back(std::move(row));
  }
}

void AuditLedger::add_message(std::string_view topic, std::int32_t partition,
                              std::optional<std::string_view> key,
                              std::optional<std::int64_t> outbox_id, std::int64_t offset) {
  ++counts_.messages;
  if (!outbox_id) {
    ++counts_.foreign;
    return;
  }
  std::int64_t id = *outbox_id;
  if (!in_range(id) || !audited_.test(index(id))) {
    if (vanished_ids_.count(id) > 0) {
      ++counts_.vanished_messages;
      return;
    }
    bool left_out =
        (ignore_below_ && id < *ignore_below_) || (in_range(id) && skipped_.test(index(id))) ||
        (ignore_above_up_to_ && (!first_id_ || id > last_id_) && id <= *ignore_above_up_to_);
    ++(left_out ? counts_.ignored : counts_.unknown);
    return;
  }
  std::size_t i = index(id);
  if (seen_.test(i)) {
    ++counts_.duplicates;  // a redelivery: never an order violation
    seen_twice_.set(i);
    return;
  }
  seen_.set(i);
  if (!key) return;
  auto [it, inserted] = last_first_delivered_.try_emplace(key_hash(topic, partition, *key), id);
  if (inserted) return;
  if (id > it->second) {
    it->second = id;
    return;
  }
  ++counts_.order_violations;
  if (counts_.order_violation_examples.size() < max_examples_) {
    counts_.order_violation_examples.push_back(
        {std::string(topic), partition, offset, printable(*key), id, it->second});
  }
}

AuditReport AuditLedger::report() const {
  AuditReport r = counts_;
  const auto& audited = audited_.words();
  const auto& published = published_.words();
  const auto& seen = seen_.words();
  const auto& twice = seen_twice_.words();
  for (std::size_t w = 0; w < audited.size(); ++w) {
    std::uint64_t lost = audited[w] & published[w] & ~seen[w];
    r.lost += static_cast<std::uint64_t>(std::popcount(lost));
    r.duplicated_rows += static_cast<std::uint64_t>(std::popcount(twice[w]));
    while (lost != 0 && r.lost_examples.size() < max_examples_) {
      int bit = std::countr_zero(lost);
      r.lost_examples.push_back(*first_id_ + static_cast<std::int64_t>(w * 64 + bit));
      lost &= lost - 1;
    }
  }
  return r;
}

std::size_t AuditLedger::memory_bytes() const {
  std::size_t bytes = 0;
  for (const Bitset* b :
       {&audited_, &skipped_, &published_, &dead_lettered_, &seen_, &seen_twice_}) {
    bytes += b->memory_bytes();
  }
  // a node (next pointer, hash, key, value) plus a bucket pointer per entry
  return bytes + last_first_delivered_.size() * (4 * sizeof(void*) + sizeof(void*)) +
         last_first_delivered_.bucket_count() * sizeof(void*) +
         vanished_ids_.size() * (3 * sizeof(void*) + sizeof(void*));
}

}  // namespace outbox::audit
