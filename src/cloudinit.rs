//! The #cloud-config document built from the appliance's file set.
