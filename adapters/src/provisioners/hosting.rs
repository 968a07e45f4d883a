//! hosting provisioner (being written).
