//! WeChat connectors: Official Accounts (`wechat_oa`) and mini-program customer-service
//! messages (`wechat_miniprogram`), plus the WeChat-family message crypto shared with WeCom.

pub mod client;
pub mod crypto;
pub mod inbound;
pub mod message;
pub mod miniprogram;
pub mod oa;
pub mod xml;

pub use miniprogram::WeChatMiniProgramConnector;
pub use oa::WeChatOaConnector;
