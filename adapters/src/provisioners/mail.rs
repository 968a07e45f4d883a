//! mail provisioner (being written).
