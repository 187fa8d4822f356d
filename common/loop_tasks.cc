#include "common/loop_tasks.h"

namespace rdv {

LoopTasks::LoopTasks(uv_loop_t* loop) : loop_(loop), check_(new uv_check_t), idle_(new uv_idle_t) {
  uv_check_init(loop, check_);
  check_->data = this;
  uv_idle_init(loop, idle_);
}

LoopTasks::~LoopTasks() { Close(); }

void LoopTasks::Close() {
  if (check_ == nullptr) return;
  std::vector<std::function<void()>> deferred;
  deferred.swap(deferred_);
  for (auto& task : deferred) task();
  check_->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(check_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_check_t*>(h); });
  uv_close(reinterpret_cast<uv_handle_t*>(idle_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_idle_t*>(h); });
  check_ = nullptr;
  idle_ = nullptr;
}

void LoopTasks::Arm() {
  if (check_ == nullptr) return;
  uv_check_start(check_, OnCheck);
  // An active idle handle makes the next poll non-blocking, so the check phase comes round.
  uv_idle_start(idle_, [](uv_idle_t*) {});
}

void LoopTasks::Schedule(Client* client) {
  dirty_.push_back(client);
  Arm();
}

void LoopTasks::Cancel(Client* client) {
  for (auto& entry : dirty_) {
    if (entry == client) entry = nullptr;
  }
}

void LoopTasks::Defer(std::function<void()> task) {
  deferred_.push_back(std::move(task));
  Arm();
}

void LoopTasks::OnCheck(uv_check_t* check) {
  auto* self = static_cast<LoopTasks*>(check->data);
  if (self == nullptr) return;
  std::vector<Client*> dirty;
  dirty.swap(self->dirty_);
  for (Client* client : dirty) {
    if (client != nullptr) client->FlushNow();
  }
  std::vector<std::function<void()>> deferred;
  deferred.swap(self->deferred_);
  for (auto& task : deferred) task();
  if (self->dirty_.empty() && self->deferred_.empty() && self->check_ != nullptr) {
    uv_check_stop(self->check_);
    uv_idle_stop(self->idle_);
  }
}

}  // namespace rdv
