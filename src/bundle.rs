//! Client bundles: one NAME.tar.gz per client with the certs.d layouts and a README.
