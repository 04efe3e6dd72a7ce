//! Certificates: server CA, server certificate, client CA and client certificates (rcgen),
//! in the guide's layout under /etc/registry/certs, kept when they exist and are valid.

// Implemented by the PKI work item; see the module docs for the contract.
