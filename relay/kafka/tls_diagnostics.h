// Says why librdkafka refused a broker's certificate: librdkafka's own message ("certificate
// verify failed: ... verify that ssl.ca.location is correctly configured") is the same for an
// untrusted CA, an expired certificate and a certificate for another host.
#pragma once

#include <librdkafka/rdkafka.h>

#include <string>

namespace outbox::kafka {

//! OpenSSL's X509_V_ERR_* code in words, with what to check (e.g. 62: the certificate is for
//! another host name).
std::string certificate_error_text(int x509_error);

//! Installs a certificate verification callback that keeps OpenSSL's verdict (never accepts
//! what OpenSSL refused) and, on a refusal, gives librdkafka the reason in words, which it logs
//! as "SSLCERTVRFY ... verification callback failed: REASON". Not installed when
//! enable.ssl.certificate.verification is false (kafka.allow_unverified_certificates).
void install_certificate_diagnostics(rd_kafka_conf_t* conf);

}  // namespace outbox::kafka
