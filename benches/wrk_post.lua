-- wrk script: the same chat-completions POST for every request (the server's raw ceiling).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer mock-key"
wrk.body = '{"model":"bench","messages":[{"role":"user","content":"question number 12345: what is 12345 squared?"}]}'
