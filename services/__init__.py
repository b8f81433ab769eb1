"""Infrastructure and applications: Redis transport (``transport/``), the weight service
(``weights/``), the command-line applications (``apps/``), metrics and process plumbing."""
