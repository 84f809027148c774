fn main() {
    println!("wagate");
}
