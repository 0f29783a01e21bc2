pub struct Cluster;
pub struct ClusterOptions;
