#include "kafka/tls_diagnostics.h"

#include <cstdio>
#include <cstring>

namespace outbox::kafka {

namespace {

int on_certificate(rd_kafka_t*, const char* broker_name, int32_t, int* x509_error, int depth,
                   const char*, size_t, char* errstr, size_t errstr_size, void*) {
  if (*x509_error == 0) return 1;
  std::snprintf(errstr, errstr_size, "%s (certificate at depth %d presented by %s)",
                certificate_error_text(*x509_error).c_str(), depth, broker_name);
  return 0;  // keep OpenSSL's refusal
}

}  // namespace

std::string certificate_error_text(int x509_error) {
  // Codes from <openssl/x509_vfy.h>, stable across OpenSSL 1.1 and 3.
  switch (x509_error) {
    case 2:
    case 20:
      return "the certificate's issuer is not trusted: no CA in ssl.ca.location (or the "
             "system's CAs) signed it";
    case 18:
    case 19:
      return "self-signed certificate not trusted: add its CA to ssl.ca.location";
    case 21:
      return "unable to verify the first certificate: the broker sends no chain to a trusted CA";
    case 9:
      return "the certificate is not yet valid (check the clocks)";
    case 10:
      return "the certificate has expired";
    case 23:
      return "the certificate has been revoked";
    case 62:
      return "hostname mismatch: the certificate is for another host than the one connected "
             "to (bootstrap_servers or the broker's advertised listener)";
    case 64:
      return "IP address mismatch: the certificate does not name the IP address connected to";
    default:
      return "certificate refused (OpenSSL X509 error " + std::to_string(x509_error) + ")";
  }
}

void install_certificate_diagnostics(rd_kafka_conf_t* conf) {
  char value[16] = "";
  size_t size = sizeof value;
  if (rd_kafka_conf_get(conf, "enable.ssl.certificate.verification", value, &size) ==
          RD_KAFKA_CONF_OK &&
      std::strcmp(value, "false") == 0) {
    return;
  }
  rd_kafka_conf_set_ssl_cert_verify_cb(conf, on_certificate);  // fails only without SSL support
}

}  // namespace outbox::kafka
