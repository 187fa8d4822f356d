#ifndef RDV_COMMON_LOOP_TASKS_H_
#define RDV_COMMON_LOOP_TASKS_H_

#include <uv.h>

#include <functional>
#include <vector>

namespace rdv {

// Per-loop work that must run after the current callbacks return, once per iteration
// (uv_check): flushing coalesced TLS writes, and destroying objects that asked to be
// destroyed from inside their own callbacks (STYLE 5).
class LoopTasks {
 public:
  explicit LoopTasks(uv_loop_t* loop);
  ~LoopTasks();
  class Client {
   public:
    virtual ~Client() = default;
    virtual void FlushNow() = 0;
  };
  void Schedule(Client* client);
  void Cancel(Client* client);
  // Runs `task` after the current callbacks (typically: delete an object).
  void Defer(std::function<void()> task);
  void Close();
  uv_loop_t* loop() const { return loop_; }

 private:
  static void OnCheck(uv_check_t* check);
  void Arm();
  uv_loop_t* loop_;
  uv_check_t* check_;
  std::vector<Client*> dirty_;
  std::vector<std::function<void()>> deferred_;
  uv_idle_t* idle_;  // keeps the loop from blocking in poll while deferred work waits
};

}  // namespace rdv

#endif  // RDV_COMMON_LOOP_TASKS_H_
