//! Rate-limit header parsing: Retry-After, retry-after-ms and the providers' reset headers.
