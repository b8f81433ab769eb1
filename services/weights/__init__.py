"""The weight service: immutable versioned snapshots, the gRPC server with its bulk
channel, and the client and follower actors load weights with."""
